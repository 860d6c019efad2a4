"""Write-behind for a file sink's large appends: their pages go to disk at once and leave
memory once they are there.

A sink's file is written once and seldom read back soon, yet every page the kernel caches
for an append is a page it must first find: a free one (on a virtual machine, often one
the host has taken back, so that its first touch faults on the host) or one reclaimed from
other files. Measured on a 2-core VM, 64 MiB appended in 1 MiB writes cost 208 ms of CPU
left in the page cache, 18 ms when the pages written 8 MiB earlier are given back (the
kernel hands them to the next writes).

So, after each write of a large body, the bytes just written are handed to writeback
(``POSIX_FADV_DONTNEED`` starts it for dirty pages, without waiting for it), and the
pages between ``2 × LAG`` and ``LAG`` bytes back, on disk by then, are dropped: each page
is asked for on several writes, in case its writeback took longer. The advice drops clean
pages only: one still dirty or being written stays cached, nothing waits for the disk, and
with ``fsync = "never"`` a disk slower than the appends leaves their pages to the kernel's
own writeback as before. With ``fsync = "always"`` the whole body is dropped after its
fsync. Advice never changes a file's content, so crash repair is unaffected; a file that
takes no advice (not a regular file, a file system that refuses it) is left to the kernel.
"""

from __future__ import annotations

import os

__all__ = ["LAG", "WriteBehind"]

#: how far behind the latest write pages are dropped: their writeback has had that long
LAG = 4 * 1024 * 1024


class WriteBehind:
    """Where one body began in the file ``fd``, whose pages are to leave memory."""

    __slots__ = ("_fd", "_start")

    def __init__(self) -> None:
        self._fd = -1  # -1: nothing to advise
        self._start = 0

    def start(self, fd: int, offset: int) -> None:
        """A body begins at ``offset`` of ``fd``; what lies before it is not this body's."""
        self._fd = fd
        self._start = offset

    def written(self, start: int, end: int) -> None:
        """The body's bytes ``[start, end)`` were just written."""
        self._advise(start, end)  # dirty: starts their writeback, keeps them
        if end - LAG > self._start:
            self._advise(max(self._start, end - 2 * LAG), end - LAG)

    def committed(self, end: int, synced: bool) -> None:
        """The body ends at ``end``, and is on disk if ``synced``: then none of it stays."""
        if synced:
            self._advise(self._start, end)
        self._fd = -1

    def stop(self) -> None:
        """The body failed: nothing more to advise."""
        self._fd = -1

    def _advise(self, start: int, end: int) -> None:
        if self._fd < 0 or end <= start:
            return
        try:
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)
        except OSError:
            self._fd = -1  # only advice: this file is left to the kernel
