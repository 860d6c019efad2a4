"""Checks the hash chain of relay's audit log (``audit.chain = true``).

Every line relay writes carries ``"prev"``: the hex SHA-256 of the previous line's bytes,
its newline included. A chain starts with 64 zeros, at every start of relayd (a restarted
daemon appends a new chain to the same file), and continues across rotated files, which
must be given oldest first.

:func:`verify` reads the files once, streaming, and stops at the first line it cannot
vouch for. Only then does it read them a second time to say what happened:

``reordered``  the line names as its predecessor a line that comes later
``inserted``   the line is not part of the chain: the line after it links past it, it
               repeats an earlier record, a later line follows the one before it, or it
               names an older record as its predecessor
``changed_or_removed``  the next line names a predecessor that exists nowhere: this line
               was edited, or the lines after it were deleted. The hashes cannot tell the
               two apart, so the line reported is the last one the chain no longer vouches
               for (for a deletion, the line before the gap)
``removed``    the first line continues a chain whose start is not among the files
``truncated``  the line has no newline: cut short, or the writer died mid-line
``malformed``  not a JSON object with a 64-hex ``prev``

A ``"reason": "audit_repaired"`` record is relayd's own note that it cut a torn last line
at start (a write cut short by a crash), kept aside in a ``.torn`` file: it chains on from
the last whole line, so the chain verifies, and each one is listed in
:attr:`VerifyResult.repairs`.

What a chain cannot show: edits to the final line or deletion of the final lines (nothing
follows them; the same holds for the lines just before a chain start, which names no
predecessor), and a rewrite by someone who recomputes every later hash. Compare the
reported :attr:`VerifyResult.head` with a copy kept elsewhere to cover those.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from relay.audit import GENESIS

__all__ = ["Problem", "Reason", "Repaired", "VerifyResult", "verify"]

Reason = Literal["reordered", "inserted", "changed_or_removed", "removed", "truncated", "malformed"]

_HASH = re.compile(r"[0-9a-f]{64}")
#: how a repair record starts its reason (orjson writes no spaces; a quote inside a
#: string value is escaped, so no field's value can look like this)
_REPAIRED = b'"reason":"audit_repaired"'


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int  # 1-based, within ``path``
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Repaired:
    """A torn tail relayd cut off, as its repair record says."""

    path: str
    line: int  # the repair record's line
    offset: int  # where the cut bytes were
    size: int
    kept_in: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.size} torn bytes cut at offset {self.offset}, kept in {self.kept_in}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    lines: int  # lines vouched for: all of them when ok, else those before the problem
    chains: int  # chain starts among the lines read (one per relayd start)
    head: str | None  # when ok, the last line's hash: ``after`` for verifying newer files
    problem: Problem | None
    repairs: tuple[Repaired, ...] = ()  # torn tails relayd cut, among the lines vouched for

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class _Line:
    index: int  # 0-based over all files
    path: str
    number: int  # 1-based within the file
    raw: bytes


def _read(paths: Sequence[str | os.PathLike[str]]) -> Iterator[_Line]:
    index = 0
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield _Line(index, os.fspath(path), number, raw)
                index += 1


def _prev(raw: bytes) -> str | None:
    """The line's ``prev`` hash, or None when the line is not a chained record."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    prev = record.get("prev") if isinstance(record, dict) else None
    return prev if isinstance(prev, str) and _HASH.fullmatch(prev) else None


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def verify(paths: Sequence[str | os.PathLike[str]], after: str = GENESIS) -> VerifyResult:
    """Check the chain through ``paths`` (oldest first); raises OSError for an unreadable file.

    ``after`` is the hash the first line must name: a new chain by default, or the
    ``head`` of an earlier verification when the older files are no longer kept.
    """
    expected = after  # the hash of the line before, which the next line must name
    chains = 0
    before: tuple[_Line, str] | None = None  # the previous line and the hash it names
    repairs: list[Repaired] = []
    for line in _read(paths):
        if not line.raw.endswith(b"\n"):
            return _fail(line, chains, "truncated", "the line has no newline: it was cut short")
        prev = _prev(line.raw)
        if prev is None:
            return _fail(line, chains, "malformed", "not a JSON record with a 'prev' hash")
        if prev == GENESIS:
            chains += 1
        elif prev != expected:
            return _broken(paths, line, prev, before, expected, chains)
        expected = _digest(line.raw)
        before = (line, prev)
        if _REPAIRED in line.raw:
            repairs.append(_repaired(line))
    return VerifyResult(lines=0 if before is None else before[0].index + 1, chains=chains, head=expected,
                        problem=None, repairs=tuple(repairs))


def _repaired(line: _Line) -> Repaired:
    removed = orjson.loads(line.raw).get("removed")
    if not isinstance(removed, dict):
        removed = {}
    return Repaired(line.path, line.number, int(removed.get("offset", -1)), int(removed.get("bytes", -1)),
                    str(removed.get("kept_in", "?")))


def _fail(line: _Line, chains: int, reason: Reason, detail: str) -> VerifyResult:
    return VerifyResult(lines=line.index, chains=chains, head=None,
                        problem=Problem(line.path, line.number, reason, detail))


def _broken(paths: Sequence[str | os.PathLike[str]], line: _Line, prev: str,
            before: tuple[_Line, str] | None, expected: str, chains: int) -> VerifyResult:
    """``line`` names ``prev`` where the previous line hashes to ``expected``: find out why."""
    if before is None:
        return _fail(line, chains, "removed",
                     "the first record continues a chain whose earlier records are missing "
                     "(give the older files first, or the head they end with)")
    previous, previous_prev = before
    if prev == previous_prev:
        return _fail(previous, chains, "inserted",
                     f"not part of the chain: {_where(line, previous)} follows the line before this one")
    later: _Line | None = None  # the line ``line`` names as its predecessor, when it comes later
    earlier: _Line | None = None  # ... when it comes before ``previous``
    successor: _Line | None = None  # a later line that names ``previous`` as its predecessor
    original: _Line | None = None  # an earlier line with the same bytes as ``line``
    digest = _digest(line.raw)
    for other in _read(paths):
        if other.index > line.index and successor is None and _prev(other.raw) == expected:
            successor = other
        other_digest = _digest(other.raw)
        if other_digest == prev:
            if other.index > line.index:
                later = later or other
            elif other.index < previous.index:
                earlier = other
        if other_digest == digest and other.index < line.index:
            original = original or other
    if later is not None:
        return _fail(line, chains, "reordered", f"it follows {_where(later, line)}, which comes later")
    if original is not None:
        return _fail(line, chains, "inserted", f"a copy of {_where(original, line)}")
    if successor is not None:
        return _fail(line, chains, "inserted",
                     f"not part of the chain: {_where(successor, line)} follows the line before this one")
    if earlier is not None:
        return _fail(line, chains, "inserted", f"it follows {_where(earlier, line)}, not the line before it")
    gap = " (is a rotated file missing?)" if line.number == 1 else ""
    # ``previous`` linked correctly itself: it is the first line the chain no longer vouches for
    return _fail(previous, chains, "changed_or_removed",
                 f"{_where(line, previous)} names a different predecessor: this line was changed, "
                 f"or lines after it were removed{gap}")


def _where(line: _Line, seen_from: _Line) -> str:
    """'line 12', or 'b.jsonl:12' when the line is in another file than ``seen_from``."""
    return f"line {line.number}" if line.path == seen_from.path else f"{line.path}:{line.number}"
