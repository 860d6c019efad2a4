"""Audit chain verification against logs written by relay's own AuditLog, then tampered with."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.audit import GENESIS, AuditLog
from relay.audit_verify import verify
from relay.config import AuditConfig


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # AuditLog only schedules its flush timer on the loop; the tests flush by hand
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def write_log(path: Path, loop: asyncio.AbstractEventLoop, count: int, first: int = 1) -> AuditLog:
    audit = AuditLog(AuditConfig(path=str(path), chain=True), loop)
    for n in range(first, first + count):
        audit.record({"ts": 1700000000.0 + n, "request_id": f"r-{n:04d}", "status": 200, "n": n})
    audit.flush()
    return audit


@pytest.fixture
def log10(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, loop, 10).close()
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_intact_log_verifies(log10: Path) -> None:
    result = verify([log10])
    assert result.ok and result.problem is None
    assert result.lines == 10 and result.chains == 1
    assert result.head == hashlib.sha256(lines_of(log10)[-1]).hexdigest()
    assert lines_of(log10)[0].endswith(b'"prev":"' + GENESIS.encode() + b'"}\n')


def test_changed_byte_is_reported_on_that_line(log10: Path) -> None:
    lines = lines_of(log10)
    assert b'"n":5,' in lines[4]
    lines[4] = lines[4].replace(b'"n":5,', b'"n":6,')
    rewrite(log10, lines)
    result = verify([log10])
    assert not result.ok and result.problem is not None
    assert (result.problem.line, result.problem.reason) == (5, "changed_or_removed")
    assert result.lines == 4
    assert str(result.problem).startswith(f"{log10}:5: changed_or_removed: line 6 names")


def test_deleted_line_is_reported_at_the_gap(log10: Path) -> None:
    lines = lines_of(log10)
    del lines[4]
    rewrite(log10, lines)
    problem = verify([log10]).problem
    # the hashes cannot tell a deletion from an edit of the line before the gap:
    # line 4 is the last line the chain no longer vouches for
    assert problem is not None
    assert (problem.line, problem.reason) == (4, "changed_or_removed")


def test_inserted_line_with_a_valid_link_is_found(log10: Path) -> None:
    lines = lines_of(log10)
    forged = b'{"n":99,"prev":"' + hashlib.sha256(lines[3]).hexdigest().encode() + b'"}\n'
    lines.insert(4, forged)
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (5, "inserted")


def test_inserted_line_with_a_made_up_link_is_found(log10: Path) -> None:
    lines = lines_of(log10)
    lines.insert(4, b'{"n":99,"prev":"' + b"ab" * 32 + b'"}\n')
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (5, "inserted")


def test_replayed_record_is_found(log10: Path) -> None:
    lines = lines_of(log10)
    lines.insert(6, lines[1])
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (7, "inserted")
    assert problem.detail == "a copy of line 2"


@pytest.mark.parametrize(("a", "b"), [(3, 4), (2, 7)])
def test_swapped_lines_are_reordered(log10: Path, a: int, b: int) -> None:
    lines = lines_of(log10)
    lines[a], lines[b] = lines[b], lines[a]
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (a + 1, "reordered")


def test_truncated_last_line(log10: Path) -> None:
    with open(log10, "r+b") as f:
        f.truncate(os.path.getsize(log10) - 10)
    result = verify([log10])
    assert result.problem is not None
    assert (result.problem.line, result.problem.reason) == (10, "truncated")
    assert result.lines == 9


def test_line_that_is_not_json(log10: Path) -> None:
    lines = lines_of(log10)
    lines[2] = b"hello\n"
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (3, "malformed")


def test_record_without_prev_is_malformed(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    path = tmp_path / "plain.jsonl"
    audit = AuditLog(AuditConfig(path=str(path), chain=False), loop)
    audit.record({"n": 1})
    audit.close()
    problem = verify([path]).problem
    assert problem is not None and (problem.line, problem.reason) == (1, "malformed")


def test_chain_continues_across_rotation_and_restarts(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    current = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    audit = write_log(current, loop, 5)
    os.rename(current, rotated)
    audit.reopen()  # what SIGUSR1 does after logrotate moved the file
    for n in range(6, 9):
        audit.record({"n": n})
    audit.close()
    write_log(current, loop, 3, first=9).close()  # relayd restarted: a new chain, same file

    result = verify([rotated, current])
    assert result.ok and result.lines == 11 and result.chains == 2

    # the newer file alone continues a chain whose start is elsewhere...
    alone = verify([current])
    assert alone.problem is not None
    assert (alone.problem.path, alone.problem.line, alone.problem.reason) == (str(current), 1, "removed")
    # ...unless told where the older file ended
    assert verify([current], after=verify([rotated]).head or "").ok


def test_rotated_files_out_of_order(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    first, second, third = tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl"
    audit = write_log(third, loop, 3)
    for older, start in ((first, 4), (second, 7)):
        os.rename(third, older)
        audit.reopen()
        for n in range(start, start + 3):
            audit.record({"n": n})
    audit.close()
    assert verify([first, second, third]).ok

    problem = verify([first, third]).problem  # the middle file is missing
    assert problem is not None
    assert (problem.path, problem.line, problem.reason) == (str(first), 3, "changed_or_removed")
    assert "rotated file missing" in problem.detail

    problem = verify([first, third, second]).problem
    assert problem is not None
    assert (problem.path, problem.line, problem.reason) == (str(third), 1, "reordered")
    assert str(second) in problem.detail


def test_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify([tmp_path / "missing.jsonl"])


def test_empty_input_is_an_empty_chain(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = verify([empty])
    assert result.ok and result.lines == 0 and result.head == GENESIS


def test_line_linked_to_an_older_record_is_found(log10: Path) -> None:
    lines = lines_of(log10)
    lines.append(b'{"n":99,"prev":"' + hashlib.sha256(lines[2]).hexdigest().encode() + b'"}\n')
    rewrite(log10, lines)
    problem = verify([log10]).problem
    assert problem is not None and (problem.line, problem.reason) == (11, "inserted")
    assert problem.detail == "it follows line 3, not the line before it"
