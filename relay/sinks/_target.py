"""The file a file sink appends to: its lock, its clean end, its rotation.

Every write happens under an exclusive ``flock`` of the file, which serialises the workers
of a multi-process relayd and an old and a new sink during a reload (a mutex keeps this
process's threads apart). Whoever holds the lock first makes sure the file ends where its
last complete write ended (``relay.sinks._repair``): at start, after opening a new file (a
rotation, a path renamed under it), and whenever the file's size is not what this writer
left. An append ends by recording the new committed length; one that fails is cut off.

Two ways in: ``append`` writes a complete body (from memory or a staged file) at once;
``hold`` keeps the lock and the end of the file for one body streamed into it
(``write_held``) until ``commit_held`` records its end or ``drop_held`` cuts it off.

Rotation comes before an append that would take the file past ``rotate`` bytes, or the first
append once ``rotate_interval`` has passed since this process opened the file. An empty
file is never rotated, so a body larger than ``rotate`` gets a file of its own rather than
being split. ``DIR/NAME.EXT`` is renamed, with the UTC time of the rotation, to::

    DIR/NAME.YYYYmmddTHHMMSSZ.EXT       e.g. archive.20240102T030405Z.ndjson
    DIR/NAME.YYYYmmddTHHMMSSZ.N.EXT     N = 1, 2, ... while the name above is taken

EXT is what follows the basename's last dot; a name without one (or a dot-file) has no
``.EXT``. A writer that finds the path renamed under it (another worker rotated it, an
operator moved it) reopens the path.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence

from relay.config import FileSinkConfig
from relay.sinks._repair import clean_end, cut, read_committed, write_committed
from relay.sinks._staging import write_all
from relay.sinks._writebehind import WriteBehind

__all__ = ["INLINE_BYTES", "Target", "rotated_name"]

log = logging.getLogger("relay.sinks.file")

#: the largest body appended from the event loop itself
INLINE_BYTES = 64 * 1024
_COPY_BYTES = 1024 * 1024  # buffer copying a staged file into the target


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


class Target:
    """The file at ``config.path``, used by one thread at a time (``_mutex``).

    ``append``, ``hold`` and the held body's calls run in the executor; ``try_append`` is
    ``append``'s non-blocking form for the loop.
    """

    def __init__(self, config: FileSinkConfig) -> None:
        self._config = config
        self._path = config.path
        self._directory = os.path.dirname(config.path)
        self._ndjson = config.format == "ndjson"
        # besides the sink's asyncio lock: a cancelled request's append may still be running
        self._mutex = threading.Lock()
        self._fd = -1
        self._identity = (0, 0)  # (st_dev, st_ino) of the file self._fd refers to
        self._regular = True  # a regular file, whose committed length is kept (not /dev/full)
        self._recorded = True  # its file system keeps user extended attributes
        self._end = -1  # where the file ended when this writer last held its lock (-1: unknown)
        self._held = -1  # the offset of the body streaming in (``hold``), -1 for none
        self._held_size = 0  # bytes of it written
        self._behind = WriteBehind()  # a large body's pages, dropped once on disk
        self._opened_at = 0.0
        self._unsynced = False
        self.fsyncs = 0
        self.rotations = 0

    def prepare(self) -> None:
        """At start: repair the file now if it exists and nobody holds its lock.

        If another worker holds it, this writer's first append repairs whatever that
        worker's restart left behind (the lock holder is still writing).
        """
        with self._mutex:
            if self._fd < 0:
                try:
                    self._open(create=False)
                except FileNotFoundError:
                    return  # the first append creates it
            if self._lock_at_once():
                try:
                    self._settle()
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

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
                    offset = self._settle()
                    if offset and self._rotation_due(offset + length):
                        offset = self._rotate()
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

        Waiting steps are: taking a lock someone holds, opening, repairing, rotating, fsync.
        """
        if self._fd < 0 or length > INLINE_BYTES or self._config.fsync == "always":
            return None
        if not self._mutex.acquire(blocking=False):
            return None
        try:
            if self._held >= 0:
                return None  # the file's end is taken by a body streaming in
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            try:
                offset = os.fstat(self._fd).st_size
                if offset != self._end or not self._is_current() or (offset and self._rotation_due(offset + length)):
                    return None
                self._write(pieces, -1, 0, offset)
                return offset
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    # --- one body streamed into the end of the file ------------------------------------------

    def hold(self, length: int | None, pieces: Sequence[bytes]) -> int:
        """Take the end of the file for one body of ``length`` bytes (None: unknown) and
        write its first ``pieces``; the body's offset.

        -1, with nothing done, if that would mean waiting (another writer holds the file)
        or a body of unknown length might have to be split by rotation: the caller stages
        the body instead. Until ``commit_held`` or ``drop_held``, the lock stays taken.
        """
        if not self._mutex.acquire(blocking=False):
            return -1
        try:
            if self._fd < 0:
                self._open()
            if not self._lock_at_once():
                return -1
            try:
                offset = self._settle()
                if offset and length is None and self._config.rotate is not None:
                    return -1
                if offset and self._rotation_due(offset + (length or 0)):
                    offset = self._rotate()
                self._held, self._held_size = offset, sum(map(len, pieces))
                if self._regular:
                    self._behind.start(self._fd, offset)
                try:
                    write_all(self._fd, pieces)
                except OSError:
                    self._drop()
                    raise
                self._behind.written(offset, offset + self._held_size)
                return offset
            finally:
                if self._held < 0 and self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def write_held(self, pieces: Sequence[bytes]) -> None:
        """More of the held body (the caller drops it if this fails)."""
        with self._mutex:
            start = self._held + self._held_size
            write_all(self._fd, pieces)
            self._held_size += sum(map(len, pieces))
            # on disk soon (the fsync at the end has less to wait for), out of memory once there
            self._behind.written(start, self._held + self._held_size)

    def commit_held(self) -> None:
        """The held body is complete: record its end, fsync if configured, let go.

        On failure the body is cut off before the error is raised.
        """
        with self._mutex:
            fd = self._fd
            try:
                end = os.fstat(fd).st_size
                self._commit(end)
            except BaseException:
                self._drop()
                raise
            self._behind.committed(end, self._config.fsync == "always")
            self._held = -1
            fcntl.flock(fd, fcntl.LOCK_UN)

    def drop_held(self) -> None:
        """Cut off the held body, if one is still held, and let go."""
        with self._mutex:
            if self._held >= 0:
                self._drop()

    # --- upkeep ---------------------------------------------------------------------------

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
        end = offset + temp_size + sum(map(len, pieces))
        try:
            if temp_fd >= 0:
                if self._regular:
                    self._behind.start(fd, offset)
                buffer = bytearray(_COPY_BYTES)
                view = memoryview(buffer)
                copied = 0
                while copied < temp_size:
                    got = os.preadv(temp_fd, [buffer], copied)
                    if not got:
                        raise OSError(errno.EIO, "staged body shorter than written")
                    write_all(fd, [view[:got]])
                    self._behind.written(offset + copied, offset + copied + got)
                    copied += got
            write_all(fd, pieces)
            self._commit(end)
        except OSError:
            self._behind.stop()
            self._undo(offset)
            raise
        self._behind.committed(end, self._config.fsync == "always")

    def _commit(self, end: int) -> None:
        """Record ``end`` as the committed length (then fsync, for fsync = "always")."""
        fd = self._fd
        if self._regular and self._recorded:
            self._recorded = write_committed(fd, end)
            if not self._recorded:
                self._no_record()
        if self._config.fsync == "always":
            os.fsync(fd)
            self.fsyncs += 1
        else:
            self._unsynced = True
        self._end = end

    def _undo(self, offset: int) -> None:
        """Cut a failed write off at ``offset`` (its record too, had it been written)."""
        if not self._regular:
            return
        try:
            os.ftruncate(self._fd, offset)
            if self._recorded:
                write_committed(self._fd, offset)
        except OSError as exc:
            # the next lock holder finds the bytes past the committed length and cuts them
            log.error("file sink %s: cannot remove a failed append from %s: %s", self._config.name, self._path, exc)

    def _drop(self) -> None:
        """Cut the held body off and let go of the lock."""
        self._behind.stop()
        try:
            self._undo(self._held)
        finally:
            self._held = -1
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _settle(self) -> int:
        """Where the locked file's last complete write ends; whatever lies past it is cut off."""
        fd = self._fd
        size = os.fstat(fd).st_size
        if size == self._end or not self._regular:
            self._end = size
            return size
        committed = read_committed(fd) if self._recorded else None
        end = clean_end(fd, size, committed, self._ndjson)
        if committed is not None and committed > size:
            log.warning("file sink %s: %s is %d bytes shorter than its committed length (its end never reached "
                        "the disk)", self._config.name, self._path, committed - size)
        if end < size:
            torn = cut(fd, self._path, end, size)
            log.warning("file sink %s: removed %d bytes of an incomplete write from the end of %s (offset %d on); "
                        "they are kept in %s", self._config.name, size - end, self._path, end, torn)
        if committed != end and self._recorded:
            self._recorded = write_committed(fd, end)
            if not self._recorded:
                self._no_record()
        self._end = end
        return end

    def _no_record(self) -> None:
        log.warning("file sink %s: the file system of %s keeps no extended attributes, so no committed length: "
                    "after a crash %s", self._config.name, self._path,
                    "only a torn last line can be found" if self._ndjson else "a torn end cannot be found")

    def _lock_at_once(self) -> bool:
        """``flock`` the file now at the path if nobody holds it; False (nothing locked) if
        someone does."""
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if self._follow_path():
                return True

    def _lock_current(self) -> None:
        """``flock`` the file now at the path, following the path if it was renamed."""
        while True:
            if self._fd < 0:
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self._follow_path():
                return

    def _follow_path(self) -> bool:
        """With the lock just taken: True if the path still names our file; else let go of
        it and open what the path names now."""
        try:
            if self._is_current():
                return True
        except BaseException:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._retire(self._fd)
        self._fd = -1
        self._open()
        return False

    def _is_current(self) -> bool:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _open(self, create: bool = True) -> None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC  # read too: a repair reads the end
        if create:
            os.makedirs(self._directory, mode=0o750, exist_ok=True)
            flags |= os.O_CREAT
        fd = os.open(self._path, flags, 0o640)
        try:
            st = os.fstat(fd)
            if create and self._config.fsync != "never":
                _fsync_dir(self._directory)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)
        self._regular = stat.S_ISREG(st.st_mode)
        self._end = -1
        self._opened_at = time.monotonic()

    def _rotation_due(self, size_after: int) -> bool:
        rotate, interval = self._config.rotate, self._config.rotate_interval
        if rotate is not None and size_after > rotate:
            return True
        return interval is not None and time.monotonic() - self._opened_at >= interval

    def _rotate(self) -> int:
        """Rename the locked current file away and open a new one, locked; its clean end.

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
        # another worker may have created the new file and appended to it first
        return self._settle()

    def _retire(self, fd: int) -> None:
        """Close a file no longer appended to, synced first unless fsync = "never"."""
        try:
            if self._unsynced and self._config.fsync != "never":
                os.fsync(fd)
                self.fsyncs += 1
            self._unsynced = False
        finally:
            os.close(fd)
