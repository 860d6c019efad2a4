"""The ``file`` sink: appends each request's body to one local file.

A 2xx means the whole body is in the file as one contiguous run that no other request's
bytes interrupt (and on disk when ``fsync = "always"``). The body is staged first, in
memory up to ``STAGE_BYTES`` and past that in an unlinked temporary file in the target's
directory, so a slow client never holds the file. Only a complete, valid body is appended,
under an exclusive ``flock`` that also serialises the workers of a multi-process relayd and
an old and a new sink during a reload. An append that fails halfway is truncated away.

``format = "ndjson"`` checks each line as one JSON value while the body streams in; a
final line without "\\n" gets one; empty lines and lines over ``MAX_RECORD_BYTES`` are
errors (400). ``format = "raw"`` appends the bytes as they come.

Rotation comes before an append that would take the file past ``rotate`` bytes, or the first
append once ``rotate_interval`` has passed since this process opened the file. An empty
file is never rotated, so a body larger than ``rotate`` gets a file of its own rather than
being split. ``DIR/NAME.EXT`` is renamed, with the UTC time of the rotation, to::

    DIR/NAME.YYYYmmddTHHMMSSZ.EXT       e.g. archive.20240102T030405Z.ndjson
    DIR/NAME.YYYYmmddTHHMMSSZ.N.EXT     N = 1, 2, ... while the name above is taken

EXT is what follows the basename's last dot; a name without one (or a dot-file) has no
``.EXT``. A writer that finds the path renamed under it (another worker rotated it, an
operator moved it) reopens the path.

Disk errors are ``InsufficientStorage`` (507) for a full disk or quota, ``ServiceUnavailable``
(503) otherwise. Disk work runs in the default executor, except a small append from memory
that can take the lock at once (a page-cache copy, far cheaper than a thread hand-off). With
``fsync = "interval"`` an fsync is due ``fsync_interval`` after the first unsynced append,
run by the shared deadline sweep.

A request with an ``Idempotency-Key`` is held to it as ``relay.idempotency`` says: a retry
of a request accepted in the last ``idempotency_ttl`` gets the first one's receipt and is
not appended again; another request under the same key (and caller) gets 422, and one
while the first is in flight 409. The keys are remembered in memory only
(``RecentReceipts``): the last ``IDEMPOTENCY_KEYS`` of them, per worker process, forgotten
on restart.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from relay.config import FileSinkConfig
from relay.errors import InsufficientStorage, RelayError, ServiceUnavailable
from relay.idempotency import RecentReceipts, Reservation
from relay.reply import Reply
from relay.request import Request
from relay.sinks._staging import MAX_RECORD_BYTES, STAGE_BYTES, NdjsonChecker, Staging, write_all
from relay.sinks.base import Receipt, SinkSlots, send_receipt
from relay.timers import Deadlines

__all__ = [
    "FileSink", "IDEMPOTENCY_KEYS", "INLINE_BYTES", "MAX_RECORD_BYTES", "STAGE_BYTES", "disk_error", "rotated_name",
]

log = logging.getLogger("relay.sinks.file")

#: the largest body appended from the event loop itself
INLINE_BYTES = 64 * 1024
#: Idempotency-Keys a file sink remembers (about 0.5 KiB of memory each)
IDEMPOTENCY_KEYS = 10_000
_COPY_BYTES = 1024 * 1024  # buffer copying a staged file into the target
_FULL = frozenset((errno.ENOSPC, errno.EDQUOT))


def disk_error(exc: OSError, sink: str) -> RelayError:
    """The client-facing error for a failed disk operation of ``sink``."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return InsufficientStorage(f"file sink is full: {reason}", sink)
    return ServiceUnavailable(f"file sink cannot write: {reason}", sink)


def rotated_name(path: str, when: float, taken: int = 0) -> str:
    """The name ``path`` is rotated to at UTC time ``when``; ``taken`` > 0 adds ``.N``."""
    directory, base = os.path.split(path)
    name, ext = os.path.splitext(base)
    parts = [name, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))]
    if taken:
        parts.append(str(taken))
    return os.path.join(directory, ".".join(parts) + ext)


def _fsync_dir(directory: str) -> None:
    """Make a file's creation or renaming durable: that is recorded in its directory."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Target:
    """The file at ``config.path``, used by one thread at a time (``_mutex``).

    ``append`` runs in the executor; ``try_append`` is its non-blocking form for the loop.
    """

    def __init__(self, config: FileSinkConfig) -> None:
        self._config = config
        self._path = config.path
        self._directory = os.path.dirname(config.path)
        # besides the sink's asyncio lock: a cancelled request's append may still be running
        self._mutex = threading.Lock()
        self._fd = -1
        self._identity = (0, 0)  # (st_dev, st_ino) of the file self._fd refers to
        self._opened_at = 0.0
        self._unsynced = False
        self.fsyncs = 0
        self.rotations = 0

    def append(self, pieces: Sequence[bytes], temp_fd: int, temp_size: int) -> int:
        """Append the staged file's content, then ``pieces``; returns the start offset.

        Closes ``temp_fd`` (if >= 0) whatever happens. On failure the file is cut back
        to where it was, so it never holds part of a request.
        """
        length = temp_size + sum(map(len, pieces))
        try:
            with self._mutex:
                self._lock_current()
                try:
                    offset = os.fstat(self._fd).st_size
                    if offset and self._rotation_due(offset + length):
                        self._rotate()
                        offset = 0
                    self._write(pieces, temp_fd, temp_size, offset)
                finally:
                    # self._fd is the locked file, or -1 when a rotation failed halfway
                    if self._fd >= 0:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
                return offset
        finally:
            if temp_fd >= 0:
                os.close(temp_fd)

    def try_append(self, pieces: Sequence[bytes], length: int) -> int | None:
        """``append`` a small body if no step would wait: else None, and nothing was done.

        Waiting steps are: taking a lock someone holds, opening, rotating, fsync.
        """
        if self._fd < 0 or length > INLINE_BYTES or self._config.fsync == "always":
            return None
        if not self._mutex.acquire(blocking=False):
            return None
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            try:
                offset = os.fstat(self._fd).st_size
                if not self._is_current() or (offset and self._rotation_due(offset + length)):
                    return None
                self._write(pieces, -1, 0, offset)
                return offset
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def sync(self) -> None:
        """fsync what was appended since the last sync, without holding up appends."""
        with self._mutex:
            if not self._unsynced or self._fd < 0:
                return
            # a duplicate stays valid even if an append rotates and closes self._fd meanwhile
            fd = os.dup(self._fd)
            self._unsynced = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._mutex:
            self.fsyncs += 1

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                self._retire(self._fd)
                self._fd = -1

    # --- with self._mutex held ----------------------------------------------------------

    def _write(self, pieces: Sequence[bytes], temp_fd: int, temp_size: int, offset: int) -> None:
        if not (pieces or temp_size):
            return
        fd = self._fd
        try:
            if temp_fd >= 0:
                buffer = bytearray(_COPY_BYTES)
                view = memoryview(buffer)
                copied = 0
                while copied < temp_size:
                    got = os.preadv(temp_fd, [buffer], copied)
                    if not got:
                        raise OSError(errno.EIO, "staged body shorter than written")
                    write_all(fd, [view[:got]])
                    copied += got
            write_all(fd, pieces)
            if self._config.fsync == "always":
                os.fsync(fd)
                self.fsyncs += 1
            else:
                self._unsynced = True
        except OSError:
            try:
                os.ftruncate(fd, offset)
            except OSError as exc:
                log.error("file sink %s: cannot remove a failed append from %s: %s",
                          self._config.name, self._path, exc)
            raise

    def _lock_current(self) -> None:
        """``flock`` the file now at the path, following the path if it was renamed."""
        while True:
            if self._fd < 0:
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if self._is_current():
                    return
            except BaseException:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                raise
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._retire(self._fd)
            self._fd = -1

    def _is_current(self) -> bool:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _open(self) -> None:
        os.makedirs(self._directory, mode=0o750, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            st = os.fstat(fd)
            if self._config.fsync != "never":
                _fsync_dir(self._directory)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)
        self._opened_at = time.monotonic()

    def _rotation_due(self, size_after: int) -> bool:
        rotate, interval = self._config.rotate, self._config.rotate_interval
        if rotate is not None and size_after > rotate:
            return True
        return interval is not None and time.monotonic() - self._opened_at >= interval

    def _rotate(self) -> None:
        """Rename the locked current file away and open a new one, locked.

        If it fails after the rename, ``self._fd`` is -1 and nothing is locked.
        """
        fd = self._fd
        now = time.time()
        taken = 0
        target = rotated_name(self._path, now)
        # only the holder of the current file's lock renames it, so no other worker can
        # take the name between this check and the rename
        while os.path.lexists(target):
            taken += 1
            target = rotated_name(self._path, now, taken)
        os.rename(self._path, target)
        self.rotations += 1
        self._fd = -1
        try:
            self._open()  # which also makes the rename durable
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._retire(fd)
        log.info("file sink %s: rotated %s to %s", self._config.name, self._path, target)

    def _retire(self, fd: int) -> None:
        """Close a file no longer appended to, synced first unless fsync = "never"."""
        try:
            if self._unsynced and self._config.fsync != "never":
                os.fsync(fd)
                self.fsyncs += 1
            self._unsynced = False
        finally:
            os.close(fd)


class FileSink:
    """Appends each request's body to ``config.path`` and answers with a JSON receipt.

    The receipt is ``{"request_id", "bytes", "records" (ndjson only), "sinks": {NAME:
    {"file": basename, "offset": start offset}}}``; ``file`` names the active file the
    body went to (a later rotation renames it). The file is opened at the first request.
    """

    remembers_keys = True

    def __init__(self, config: FileSinkConfig, deadlines: Deadlines) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._target = _Target(config)
        self._directory, self._basename = os.path.split(config.path)
        self._staging_prefix = f".{self._basename}."
        self._lock = asyncio.Lock()  # appends queue here rather than each holding a thread
        self._closed = False
        #: receipts by Idempotency-Key scope, so a retried request is not appended twice
        self.recent = RecentReceipts(IDEMPOTENCY_KEYS, config.idempotency_ttl)
        #: loop time a periodic fsync is due (fsync = "interval"), 0.0 for none
        self.deadline = 0.0
        #: the periodic fsync in progress, if any
        self.flushing: asyncio.Future[None] | None = None
        if config.fsync == "interval":
            deadlines.watch(self)

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> None:
        return None  # delivered the general way

    def open(self, request: Request, answers: bool, reply: Reply | None) -> FileDelivery:
        if self._closed:
            raise ServiceUnavailable("file sink is closed", self.name)
        return FileDelivery(self, request)

    async def append(self, staging: Staging) -> Receipt:
        """Append a staged body as one run; the receipt says where it went."""
        try:
            offset = self._append_now(staging)
            if offset is None:
                async with self._lock:
                    if self._closed:
                        raise ServiceUnavailable("file sink is closed", self.name)
                    # the append we queued behind is done: often no thread is needed now
                    offset = self._append_now(staging)
                    if offset is None:
                        offset = await self._loop.run_in_executor(
                            None, self._target.append, staging.pieces, staging.take_file(), staging.temp_size
                        )
        except OSError as exc:
            raise self.disk_failure(exc) from None
        if self.config.fsync == "interval" and not self.deadline:
            self.deadline = self._loop.time() + self.config.fsync_interval
        return {"file": self._basename, "offset": offset}

    def disk_failure(self, exc: OSError) -> RelayError:
        log.warning("file sink %s: %s: %s", self.name, self.config.path, exc)
        return disk_error(exc, self.name)

    def new_staging(self) -> Staging:
        return Staging(self._loop, self._directory, self._staging_prefix)

    def _append_now(self, staging: Staging) -> int | None:
        if staging.temp_fd >= 0:
            return None
        return self._target.try_append(staging.pieces, staging.size)

    def on_deadline(self) -> None:
        """The periodic fsync is due (called by the deadline sweep)."""
        if self.flushing is None or self.flushing.done():
            self.flushing = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._loop.run_in_executor(None, self._target.sync)
        except OSError as exc:
            # nobody waits for this answer and data may be lost: say so loudly
            log.error("file sink %s: fsync of %s failed: %s", self.name, self.config.path, exc)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: fsyncs done and files rotated since the sink started."""
        return {"fsyncs": self._target.fsyncs, "rotations": self._target.rotations}

    async def close(self) -> None:
        """Let in-flight appends finish, sync (unless fsync = "never") and close the file."""
        self._closed = True
        self._deadlines.unwatch(self)
        self.deadline = 0.0
        if self.flushing is not None:
            await asyncio.wait([self.flushing])
        async with self._lock:
            await self._loop.run_in_executor(None, self._target.close)


class FileDelivery:
    """One request's body staged for ``FileSink``; appended when the body is complete."""

    __slots__ = ("_sink", "_request", "_reservation", "_checker", "_staging")

    stopped = False  # a file takes the whole body

    def __init__(self, sink: FileSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        claim = request.claim
        self._reservation: Reservation | None = None if claim is None else sink.recent.reserve(claim)  # or 409
        self._checker = NdjsonChecker() if sink.config.format == "ndjson" else None
        self._staging = sink.new_staging()

    async def write(self, data: bytes) -> None:
        if self._checker is not None:
            self._checker.feed(data)
        try:
            await self._staging.add(data)
        except OSError as exc:
            raise self._sink.disk_failure(exc) from None

    async def finish(self) -> Receipt:
        try:
            if self._checker is not None and self._checker.finish():
                await self._staging.add(b"\n")
            if self._reservation is None:
                return await self._sink.append(self._staging)
            return await self._reservation.once(lambda: self._sink.append(self._staging))
        except OSError as exc:
            raise self._sink.disk_failure(exc) from None
        finally:
            self._staging.discard()

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        records = self._checker.records if self._checker is not None else None
        send_receipt(reply, self._request, receipts, records)

    def abort(self) -> None:
        self._staging.discard()
        if self._reservation is not None:
            self._reservation.release()

