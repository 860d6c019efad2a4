"""Where a file sink's last complete write ends, and cutting off what a crash left past it.

Every append ends by recording the file's new length in the file's own extended attribute
``user.relay.committed`` (the *committed length*), before the append's fsync and before the
client is answered. Kept on the file rather than beside it, the record is renamed with the
file when it rotates, and the one fsync that makes an append durable makes its record
durable too. Every write happens under the file's ``flock``, so whoever holds the lock and
finds bytes past the committed length knows their writer is gone without finishing
(killed mid-append, or unable to undo a failed one): no acknowledged byte lies there, and
no live writer is still adding to them.

Those bytes are appended to ``PATH.torn`` (synced) and only then cut from the file. A
file without a record (written by something else, or on a file system that keeps no user
attributes) or shorter than its record (its end was lost before it reached the disk) falls
back on its format: an NDJSON file's clean end is its last newline; a raw file is taken as
complete.
"""

from __future__ import annotations

import errno
import os

__all__ = ["COMMITTED", "TORN_SUFFIX", "clean_end", "cut", "read_committed", "write_committed"]

#: the extended attribute holding a file's committed length (decimal ASCII)
COMMITTED = "user.relay.committed"
#: what removed bytes are kept in: the target's path plus this
TORN_SUFFIX = ".torn"
_UNSUPPORTED = frozenset((errno.ENOTSUP, errno.EOPNOTSUPP))
_BLOCK = 1024 * 1024  # reading backwards for a newline, and copying to the .torn file


def read_committed(fd: int) -> int | None:
    """The file's committed length; None if it has none (or its file system keeps none)."""
    try:
        value = os.getxattr(fd, COMMITTED)
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in _UNSUPPORTED:
            return None
        raise
    try:
        return int(value)
    except ValueError:
        return None  # not ours to trust: the format's own rule decides


def write_committed(fd: int, length: int) -> bool:
    """Record ``length`` as committed; False if the file system keeps no user attributes."""
    try:
        os.setxattr(fd, COMMITTED, b"%d" % length)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        raise
    return True


def clean_end(fd: int, size: int, committed: int | None, ndjson: bool) -> int:
    """Where the last complete write in a file of ``size`` bytes ends."""
    if committed is not None and committed <= size:
        return committed
    return _after_last_newline(fd, size) if ndjson else size


def _after_last_newline(fd: int, size: int) -> int:
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        block = os.pread(fd, end - start, start)
        if len(block) != end - start:
            raise OSError(errno.EIO, "file shorter than its size while reading it")
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def cut(fd: int, path: str, end: int, size: int) -> str:
    """Move bytes ``end``..``size`` of the file at ``path`` to its ``.torn`` file; its name.

    The removed bytes are synced in the ``.torn`` file before the target is cut, so a
    crash in between repeats the move rather than losing them.
    """
    torn_path = path + TORN_SUFFIX
    torn = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        offset = end
        while offset < size:
            block = os.pread(fd, min(_BLOCK, size - offset), offset)
            if not block:
                raise OSError(errno.EIO, "file shorter than its size while reading it")
            view = memoryview(block)
            while view:
                view = view[os.write(torn, view):]
            offset += len(block)
        os.fsync(torn)
    finally:
        os.close(torn)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return torn_path
