"""Process-wide allocator settings for streaming bodies, applied once at daemon start.

A request body arrives as a stream of fresh ``bytes`` of up to a few hundred KiB. With
glibc's defaults, allocations that large are served by ``mmap`` and returned with
``munmap`` (or the heap is trimmed back as soon as they are freed), so every piece costs
page faults and the kernel zeroing new pages: measured here, that doubled the CPU a
64 MiB upload into a file sink takes. Keeping such blocks on the heap, and the freed heap
for reuse, lets each piece land in memory already mapped. Memory stays bounded: a body's
pieces are bounded by back-pressure, and what the heap keeps is what it last needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_body_buffers_on_heap"]

log = logging.getLogger("relay.heap")

#: blocks below this come from the heap (glibc's default starts at 128 KiB)
MMAP_THRESHOLD = 8 * 1024 * 1024
#: free memory at the top of the heap kept for reuse rather than returned at once
TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_body_buffers_on_heap() -> None:
    """Set glibc's thresholds; a no-op where the C library has no ``mallopt`` (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:
        return
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        log.warning("mallopt refused the body buffer thresholds")
