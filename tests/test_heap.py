"""The allocator settings relayd applies at start: a body-sized block comes from the heap."""

from __future__ import annotations

import subprocess
import sys

from support.procs import ROOT, child_env

PROBE = """
import ctypes, ctypes.util

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
{setup}
mapped = libc.mallinfo2().hblks
block = bytes(512 * 1024)  # a body piece's size
print(libc.mallinfo2().hblks - mapped)
"""


def mapped_blocks_for_a_body_piece(setup: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=child_env(), check=True)
    return int(done.stdout)


def test_a_body_sized_block_is_mapped_by_default_and_on_the_heap_once_set() -> None:
    assert mapped_blocks_for_a_body_piece("") == 1  # glibc's default: an mmap of its own
    setup = "from relay.heap import keep_body_buffers_on_heap; keep_body_buffers_on_heap()"
    assert mapped_blocks_for_a_body_piece(setup) == 0
