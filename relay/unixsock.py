"""Binding Unix stream sockets safely (listeners and the admin socket)."""

from __future__ import annotations

import os
import socket
import stat

from relay.errors import StartupError


def bind_unix_socket(path: str, mode: int) -> socket.socket:
    """A Unix stream socket bound at ``path`` whose file has ``mode`` from the first moment.

    A stale socket file (nobody listening) is replaced; raises StartupError when ``path``
    exists and is not a socket, or a running server listens on it.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # nobody is listening: a leftover from a crashed run
            else:
                raise StartupError(f"{path} is in use by a running server")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # the umask makes the file appear with its final mode: no window where it is wider
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return sock
