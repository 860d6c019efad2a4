"""Holding one request's body until it is appended: NDJSON checking and staging.

``NdjsonChecker`` checks a body as NDJSON while it streams in, whatever the read
boundaries. ``Staging`` keeps a request's bytes in memory up to ``STAGE_BYTES`` and past
that, for a body that cannot be written into the end of the file as it streams (see
``relay.sinks.file``), in an unlinked temporary file in the target's directory.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence

import orjson

from relay.errors import InvalidBody

#: bytes of one request held in memory; the rest is staged in a temporary file
STAGE_BYTES = 1024 * 1024
#: the longest NDJSON line accepted (it is held whole in memory while it is checked)
MAX_RECORD_BYTES = 1024 * 1024
_IOV_MAX = 1024  # writev's limit on buffers per call (Linux)


def write_all(fd: int, pieces: Sequence[bytes | memoryview]) -> None:
    """Write every byte of ``pieces`` (none empty) to ``fd``, resuming after short writes."""
    pending = list(pieces)
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first:first + _IOV_MAX])
        while written:
            size = len(pending[first])
            if written >= size:
                written -= size
                first += 1
            else:
                pending[first] = memoryview(pending[first])[written:]
                written = 0


def check_whole(body: bytes) -> tuple[int, bool] | None:
    """A whole body checked as NDJSON: its records and whether a final "\\n" is due; None
    when a line is bad (the general path then reads it again and says which)."""
    checker = NdjsonChecker()
    try:
        checker.feed(body)
        newline_due = checker.finish()
    except InvalidBody:
        return None
    return checker.records, newline_due


class NdjsonChecker:
    """Checks a body as NDJSON while it streams in, whatever the read boundaries."""

    __slots__ = ("records", "_partial")

    def __init__(self) -> None:
        self.records = 0
        self._partial = bytearray()  # the current line so far, when it spans reads

    def feed(self, data: bytes) -> None:
        """Check every line ``data`` completes; raises ``InvalidBody`` at the first bad one."""
        end = data.find(b"\n")
        if end < 0:
            self._hold(data)
            return
        view = memoryview(data)
        if self._partial:
            self._hold(view[:end])
            self._check(self._partial)
            self._partial.clear()
        else:
            self._check(view[:end])
        start = end + 1
        while (end := data.find(b"\n", start)) >= 0:
            self._check(view[start:end])
            start = end + 1
        if start < len(data):
            self._hold(view[start:])

    def finish(self) -> bool:
        """Check the last line; True when it lacked its "\\n" and one must be appended."""
        if not self._partial:
            return False
        self._check(self._partial)
        return True

    def _hold(self, piece: bytes | memoryview) -> None:
        if len(self._partial) + len(piece) > MAX_RECORD_BYTES:
            raise InvalidBody(f"line {self.records + 1}: longer than {MAX_RECORD_BYTES} bytes")
        self._partial += piece

    def _check(self, line: bytes | bytearray | memoryview) -> None:
        self.records += 1
        if len(line) > MAX_RECORD_BYTES:
            raise InvalidBody(f"line {self.records}: longer than {MAX_RECORD_BYTES} bytes")
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            why = "an empty line" if not bytes(line).strip() else f"{exc.msg} at column {exc.colno}"
            raise InvalidBody(f"line {self.records}: not valid JSON ({why})") from None


class Staging:
    """One request's bytes until they are appended: memory first, then a temporary file.

    The temporary file is unlinked as soon as it exists, so nothing is left behind whatever
    happens; it shares the target's file system, so a full disk shows while staging.
    """

    __slots__ = ("_loop", "_directory", "_prefix", "pieces", "_buffered", "size", "temp_fd", "temp_size",
                 "_spilling")

    def __init__(self, loop: asyncio.AbstractEventLoop, directory: str, prefix: str) -> None:
        self._loop = loop
        self._directory = directory
        self._prefix = prefix
        self.pieces: list[bytes] = []  # the bytes after the temporary file's
        self._buffered = 0
        self.size = 0
        self.temp_fd = -1
        self.temp_size = 0
        self._spilling: asyncio.Future[None] | None = None

    async def add(self, data: bytes) -> None:
        self.pieces.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= STAGE_BYTES:
            pieces, self.pieces, self._buffered = self.pieces, [], 0
            if self.temp_fd < 0:
                self.temp_fd = self._create()
            self._spilling = job = self._loop.run_in_executor(None, write_all, self.temp_fd, pieces)
            # a thread cannot be stopped: if this request is cancelled the write runs on, and
            # discard() closes the file once it is done
            await asyncio.shield(job)
            self._spilling = None
            self.temp_size += sum(map(len, pieces))

    def _create(self) -> int:
        # two quick metadata calls, once per large body; the data is written in a thread
        os.makedirs(self._directory, mode=0o750, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(prefix=self._prefix, suffix=".part", dir=self._directory)
        try:
            os.unlink(temp_path)
        except OSError:
            os.close(fd)
            raise
        return fd

    def clear(self) -> None:
        """Forget the bytes held in memory: someone else wrote them."""
        self.pieces, self._buffered, self.size = [], 0, 0

    def take_file(self) -> int:
        """Hand the temporary file (or -1) to whoever appends it; they close it."""
        fd, self.temp_fd = self.temp_fd, -1
        return fd

    def discard(self) -> None:
        """Release the temporary file, if this request still owns one."""
        fd = self.take_file()
        spilling, self._spilling = self._spilling, None
        if fd < 0:
            return
        if spilling is not None and not spilling.done():
            spilling.add_done_callback(lambda _: self._close(fd))
        else:
            self._close(fd)

    def _close(self, fd: int) -> None:
        # closing a large unlinked file frees its blocks: not on the event loop
        self._loop.run_in_executor(None, os.close, fd)
