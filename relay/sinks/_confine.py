"""Opening a regular file beneath a root directory, and nothing outside it.

The path a client asks for is already normalized (relay/paths.py refuses dot-segments,
encoded separators, NUL and invalid UTF-8), but the file system can still lead out of
the root: a symlink inside it may point anywhere. Checking a resolved name first and
opening it after leaves a window in which a link can be swapped in (TOCTOU), so the
kernel does the confinement while it opens:

* ``openat2`` with ``RESOLVE_BENEATH`` (Linux 5.6+) resolves the path relative to the
  root's descriptor and fails with ``EXDEV`` as soon as any step — ``..`` or a symlink,
  absolute or relative — would leave it. Symlinks that stay inside the root are
  followed, as lighttpd and nginx follow them by default; magic links (``/proc/.../fd``)
  are refused.
* Where ``openat2`` is missing, each component is opened with ``O_NOFOLLOW`` relative
  to the previous one, so no symlink is followed at all: stricter (a link inside the
  root is refused too), never looser.

The opened descriptor is then ``fstat``-ed: only a regular file is served, so a
directory, device, FIFO or socket is refused whatever name led to it. Opening uses
``O_NONBLOCK`` so a FIFO cannot hang the open. Every refusal is a 404, the same as a
missing file, so a client learns nothing about what exists outside the root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

from relay.errors import NotFound

__all__ = ["FileRefused", "open_beneath"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture Linux added it to
_PATH_MAX = 4095
_NAME_MAX = 255
# what the file system says when the path cannot name a regular file beneath the root
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})
_OUTSIDE = frozenset({errno.EXDEV, errno.ELOOP})


class FileRefused(NotFound):
    """No regular file beneath the root has this name (missing, outside, or not a file)."""

    code = "no_file"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    return syscall


_SYSCALL = _load_syscall()
_HAVE_OPENAT2 = _SYSCALL is not None


def open_beneath(root_fd: int, relative: str) -> tuple[int, os.stat_result]:
    """Open ``relative`` (``a/b.txt``) beneath the directory ``root_fd`` for reading.

    Returns the descriptor (the caller closes it) and its ``fstat``. Raises
    :class:`FileRefused` when the name is unusable, the file is missing, the path leaves
    the root, or what it names is not a regular file.
    """
    name = _checked_name(relative)
    fd = _open(root_fd, name)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not_regular", f"{relative} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _checked_name(relative: str) -> bytes:
    # paths.py has refused these already; checked again because a mistake here reads
    # files outside the root
    parts = relative.split("/")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        raise FileRefused("bad_name", f"{relative!r} is not a file name")
    try:
        name = relative.encode("utf-8")
    except UnicodeEncodeError:
        raise FileRefused("bad_name", f"{relative!r} is not UTF-8") from None
    if len(name) > _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in parts):
        raise FileRefused("missing", "name too long")
    return name


def _open(root_fd: int, name: bytes) -> int:
    global _HAVE_OPENAT2
    try:
        if _HAVE_OPENAT2:
            try:
                return _openat2(root_fd, name)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter
                    raise
                _HAVE_OPENAT2 = False
        return _open_walk(root_fd, name)
    except OSError as exc:
        raise _refusal(exc, name) from None


def _openat2(root_fd: int, name: bytes) -> int:
    assert _SYSCALL is not None
    how = _OpenHow(_OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = int(_SYSCALL(_SYS_OPENAT2, root_fd, name, ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return fd


def _open_walk(root_fd: int, name: bytes) -> int:
    *directories, last = name.split(b"/")
    current = root_fd
    try:
        for directory in directories:
            step = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            if current != root_fd:
                os.close(current)
            current = step
        return os.open(last, _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=current)
    finally:
        if current != root_fd:
            os.close(current)


def _refusal(exc: OSError, name: bytes) -> FileRefused:
    shown = name.decode()
    if exc.errno in _MISSING:
        return FileRefused("missing", f"{shown}: no such file")
    if exc.errno in _OUTSIDE:
        return FileRefused("outside", f"{shown} leads outside the root")
    # ENXIO (a socket), EACCES and the rest: not something relay may serve
    return FileRefused("not_regular", f"{shown}: {exc.strerror}")
