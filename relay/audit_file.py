"""The audit log's file: appended whole or not at all, and repaired when found torn.

An append either lands completely or leaves the file as it was: a write cut short (the
disk filled up halfway) is cut back with ``ftruncate`` to where the file ended before, so
no half line is ever left for the next append to be glued onto. With ``fsync = "always"``
an append counts only once it is on the disk (a failed fsync is undone like a failed
write); with ``"interval"`` what was appended is synced ``fsync_interval`` after the first
unsynced append, in a thread, so the event loop never waits for the disk.

A process killed mid-write (or a machine that lost power) can still leave a last line
without its newline. :meth:`AuditFile.open` finds such a torn tail, keeps its bytes in a
``.torn`` file beside the log (``audit.jsonl`` → ``audit.jsonl.torn``, appended, synced
first) and cuts it off; the :class:`Repair` it returns says what was removed and which
line the chain goes on from.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import sys
from dataclasses import dataclass

from relay.config import AuditConfig

log = logging.getLogger("relay.audit")

#: how much of the file's end is read at a time while looking for its last lines
_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Repair:
    """A torn last line cut off at start."""

    offset: int  # where the torn bytes began (the file's size after the cut)
    size: int  # how many bytes were cut
    sha256: str  # of the bytes cut
    kept_in: str  # the file they were appended to
    last_line: str | None  # SHA-256 of the last whole line, which the chain goes on from


class AuditFile:
    def __init__(self, config: AuditConfig, loop: asyncio.AbstractEventLoop) -> None:
        self._config = config
        self._loop = loop
        self._fd = -1
        #: the file's size after the last append that landed whole
        self._size = 0
        #: an undone append could not be cut back: cut before the next one
        self._torn = False
        self._sync_timer: asyncio.TimerHandle | None = None
        self._syncing: asyncio.Future[None] | None = None

    @property
    def regular(self) -> bool:
        """A file relay owns (not standard output)."""
        return self._config.path != "-"

    def open(self) -> Repair | None:
        """Open the file for appending (creating it); cut a torn last line, saying what went."""
        if not self.regular:
            self._fd = sys.stdout.fileno()
            return None
        path = self._config.path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        return self._repair()

    def _repair(self) -> Repair | None:
        end = self._size
        if end == 0 or os.pread(self._fd, 1, end - 1) == b"\n":
            return None
        cut = self._line_start(end)  # the torn line starts after the last newline
        torn = os.pread(self._fd, end - cut, cut)
        kept_in = self._config.path + ".torn"
        fd = os.open(kept_in, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            # one torn piece a line, so that several repairs stay apart
            _write_all(fd, torn + b"\n")
            os.fsync(fd)  # kept safe before it is cut from the log
        finally:
            os.close(fd)
        os.ftruncate(self._fd, cut)
        self._size = cut
        if self._config.fsync != "never":
            os.fsync(self._fd)
        last_line = None
        if cut > 0:
            start = self._line_start(cut - 1)
            last_line = hashlib.sha256(os.pread(self._fd, cut - start, start)).hexdigest()
        log.warning("audit log %s: cut a torn last line of %d bytes at offset %d (kept in %s)",
                    self._config.path, len(torn), cut, kept_in)
        return Repair(cut, len(torn), hashlib.sha256(torn).hexdigest(), kept_in, last_line)

    def _line_start(self, end: int) -> int:
        """Where the line holding the byte before ``end`` begins: just after the newline
        before it, or 0."""
        while end > 0:
            start = max(0, end - _BLOCK)
            newline = os.pread(self._fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def append(self, data: bytes) -> None:
        """Append ``data`` whole; on OSError the file is left as it was (as far as it can be)."""
        fd = self._fd
        if fd < 0:
            raise OSError(errno.EBADF, "the audit log could not be opened")
        if self._torn:
            os.ftruncate(fd, self._size)
            self._torn = False
        try:
            _write_all(fd, data)
            if self._config.fsync == "always" and self.regular:
                os.fsync(fd)
        except OSError:
            if self.regular:
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    self._torn = True
            raise
        self._size += len(data)
        if self._config.fsync == "interval" and self._sync_timer is None and self.regular:
            self._sync_timer = self._loop.call_later(self._config.fsync_interval, self._sync_later)

    def _sync_later(self) -> None:
        self._sync_timer = None
        if self._syncing is not None and not self._syncing.done():
            # the sync before is still running: this one follows it
            self._sync_timer = self._loop.call_later(self._config.fsync_interval, self._sync_later)
            return
        fd = self._fd
        self._syncing = syncing = self._loop.run_in_executor(None, os.fsync, fd)

        def synced(done: asyncio.Future[None]) -> None:
            exc = done.exception()
            if exc is not None and fd == self._fd:  # not a file closed meanwhile
                log.error("audit log %s: fsync failed: %s", self._config.path, exc)

        syncing.add_done_callback(synced)

    def close(self) -> None:
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        if not self.regular or self._fd < 0:
            return
        try:
            if self._config.fsync != "never":
                os.fsync(self._fd)
        except OSError as exc:
            log.error("audit log %s: fsync failed: %s", self._config.path, exc)
        finally:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)  # a regular file takes it whole but for a full disk or a signal
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]
