"""The audit log's file under faults: writes cut short by a file-size limit (the kernel's
own EFBIG, the same path as a full disk) leave no torn line and no gap in the chain, the
records are retried until they land, and a torn tail left by a crash is cut at start and
recorded, so the chain verifies."""

from __future__ import annotations

import asyncio
import hashlib
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.audit import AuditLog
from relay.audit_verify import verify
from relay.config import AuditConfig


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def size_limit() -> Iterator[None]:
    """Lets a test cap the size of files this process writes; the cap is lifted after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old)


def cap_files_at(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def uncap() -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def log_of(path: Path, loop: asyncio.AbstractEventLoop, count: int, **config: Any) -> AuditLog:
    """An audit log at ``path`` holding records ``{"n": 0}`` … ``{"n": count - 1}``."""
    audit = AuditLog(AuditConfig(path=str(path), **config), loop)
    for n in range(count):
        audit.record({"n": n})
    audit.flush()
    return audit


def run_until(loop: asyncio.AbstractEventLoop, condition: object, timeout: float = 5.0) -> None:
    """Run ``loop`` until ``condition()`` holds (its timers firing as they fall due)."""
    assert callable(condition)

    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(wait(), timeout))


def test_a_write_cut_short_leaves_the_file_whole_and_is_retried(
        tmp_path: Path, loop: asyncio.AbstractEventLoop, size_limit: None) -> None:
    path = tmp_path / "audit.jsonl"
    audit = log_of(path, loop, 3)
    before = path.read_bytes()
    cap_files_at(len(before) + 100)  # room for about two of the next 40 records
    for n in range(3, 43):
        audit.record({"n": n, "pad": "x" * 20})
    audit.flush()
    assert path.read_bytes() == before  # the part that fitted was cut back
    assert audit.refusing and audit.write_failures == 1
    audit.record({"n": 43})  # noted while the disk refuses: kept in order
    uncap()
    run_until(loop, lambda: not audit.refusing)
    audit.close()
    written = records(path)
    assert [r.get("n") for r in written[:-1]] == list(range(44))
    assert written[-1]["reason"] == "audit_resumed" and written[-1]["lost"] == 0
    result = verify([path])
    assert result.ok and result.chains == 1, result.problem


def test_continue_keeps_serving_while_the_records_wait(
        tmp_path: Path, loop: asyncio.AbstractEventLoop, size_limit: None) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(path=str(path), on_failure="continue"), loop)
    cap_files_at(1)
    audit.record({"n": 0})
    audit.flush()
    assert not audit.refusing and audit.write_failures == 1 and path.read_bytes() == b""
    uncap()
    run_until(loop, lambda: path.stat().st_size > 0)
    audit.close()
    assert verify([path]).ok and records(path)[0]["n"] == 0


@pytest.mark.parametrize("torn", [b'{"ts":1700000000.5,"request_id":"a-0', b"x"], ids=["half-record", "one-byte"])
def test_a_torn_last_line_is_cut_kept_and_recorded(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                                   torn: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    log_of(path, loop, 4).close()
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(torn)  # what a writer killed mid-line leaves
    assert verify([path]).problem is not None

    audit = AuditLog(AuditConfig(path=str(path)), loop)  # a restart
    audit.record({"n": 4})
    audit.close()

    lines = path.read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:4]) == whole
    repair = orjson.loads(lines[4])
    assert repair["reason"] == "audit_repaired"
    assert repair["prev"] == hashlib.sha256(lines[3]).hexdigest()  # chained on, not a new chain
    assert repair["removed"] == {"offset": len(whole), "bytes": len(torn),
                                 "sha256": hashlib.sha256(torn).hexdigest(), "kept_in": f"{path}.torn"}
    assert (tmp_path / "audit.jsonl.torn").read_bytes() == torn + b"\n"
    result = verify([path])
    assert result.ok and result.lines == 6 and result.chains == 1, result.problem
    assert [(r.line, r.offset, r.size) for r in result.repairs] == [(5, len(whole), len(torn))]


def test_a_log_that_is_all_torn_starts_a_chain_with_its_repair(tmp_path: Path,
                                                              loop: asyncio.AbstractEventLoop) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"ts":1,"requ')
    AuditLog(AuditConfig(path=str(path)), loop).close()
    result = verify([path])
    assert result.ok and result.lines == 1 and len(result.repairs) == 1
    assert records(path)[0]["removed"] == {"offset": 0, "bytes": 13, "sha256": hashlib.sha256(b'{"ts":1,"requ')
                                           .hexdigest(), "kept_in": f"{path}.torn"}


def test_an_intact_log_is_left_alone_at_start(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    path = tmp_path / "audit.jsonl"
    log_of(path, loop, 1).close()
    AuditLog(AuditConfig(path=str(path)), loop).close()
    assert len(records(path)) == 1 and not (tmp_path / "audit.jsonl.torn").exists()
