"""Files that survive a crash whole: written beside their place, fsynced, then moved in.

A crash at any point leaves the old file or the new one, never a torn one, and once
:func:`replace` returns the new content is on disk, directory entry included.
"""

from __future__ import annotations

import os

__all__ = ["remove_leftovers", "replace", "write_temporary"]


def _temporary(path: str, pid: int) -> str:
    return f"{path}.{pid}.tmp"


def write_temporary(path: str, data: bytes) -> str:
    """Write ``data`` to a new private (0600) file beside ``path``, fsynced; its name."""
    temporary = _temporary(path, os.getpid())
    try:
        os.unlink(temporary)  # left by a process that died with our pid: nobody else uses this name
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def replace(path: str, data: bytes) -> None:
    """Make ``data`` the content of ``path`` atomically and durably. Raises OSError."""
    temporary = write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    # the rename is durable only once the directory entry is
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_leftovers(path: str) -> list[str]:
    """Remove the temporary files beside ``path`` of processes that died while writing one
    (killed mid-write: each takes room a full disk needs); the names removed. A process
    still alive may be writing its own, which stays."""
    directory, name = os.path.split(path)
    prefix = name + "."
    removed = []
    for entry in os.listdir(directory or "."):
        pid = entry[len(prefix):-len(".tmp")] if entry.startswith(prefix) and entry.endswith(".tmp") else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except FileNotFoundError:
            continue  # another process cleared it first
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
