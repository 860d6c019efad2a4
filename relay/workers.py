"""What makes a relayd process one worker among several.

With ``server.workers = N`` a supervisor binds the listen sockets and starts N worker
processes (``relayd worker``), handing each its sockets by file descriptor: a Unix
socket is shared by all, a TCP address gets one ``SO_REUSEPORT`` socket per worker so
the kernel spreads connections evenly. Each worker keeps its own admin socket and audit
file, named after the configured ones with ``.wN`` before the extension
(``var/log/audit.jsonl`` → ``var/log/audit.w1.jsonl``), so every audit file is one hash
chain; operators talk to the supervisor's admin socket, which asks the workers.
A worker never outlives its supervisor: the kernel sends it SIGTERM when the supervisor
dies (even by SIGKILL), so a relayd started again never shares its sockets with orphans
that no ``revoke`` or ``reload`` reaches any more.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import socket

import orjson

from relay.config import Config, ListenAddress
from relay.errors import StartupError

ENV_ID = "RELAY_WORKER_ID"
ENV_FDS = "RELAY_LISTEN_FDS"
ENV_SUPERVISOR = "RELAY_SUPERVISOR_PID"
ENV_STATE_DIR = "RELAY_STATE_DIR"
ENV_SUPERVISOR_ADMIN = "RELAY_SUPERVISOR_ADMIN"
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def worker_path(path: str, worker: int) -> str:
    """``path`` for worker ``worker``: ``DIR/NAME.EXT`` → ``DIR/NAME.wN.EXT``."""
    root, ext = os.path.splitext(path)
    return f"{root}.w{worker}{ext}"


def supervisor_path(path: str) -> str:
    """``path`` for the supervisor itself: ``DIR/NAME.EXT`` → ``DIR/NAME.supervisor.EXT``."""
    root, ext = os.path.splitext(path)
    return f"{root}.supervisor{ext}"


class WorkerRole:
    """This process is worker ``id``, serving on sockets the supervisor bound."""

    def __init__(self, worker_id: int, fds: dict[str, int], state_dir: str, supervisor: int,
                 supervisor_admin: str) -> None:  # fmt: skip
        self.id = worker_id
        self._fds = fds
        #: the supervisor's: the file it writes is the one every worker reads, whatever
        #: the configuration file says by the time a worker starts again
        self._state_dir = state_dir
        self._supervisor = supervisor  # its pid
        #: the supervisor's admin socket, where a worker has grant changes made
        self.supervisor_admin = supervisor_admin

    @classmethod
    def from_environment(cls) -> WorkerRole:
        fds = {str(k): int(v) for k, v in orjson.loads(os.environ[ENV_FDS]).items()}
        return cls(int(os.environ[ENV_ID]), fds, os.environ[ENV_STATE_DIR], int(os.environ[ENV_SUPERVISOR]),
                   os.environ[ENV_SUPERVISOR_ADMIN])

    def environment(self) -> dict[str, str]:
        """The variables that make a child process this worker."""
        return {ENV_ID: str(self.id), ENV_FDS: orjson.dumps(self._fds).decode(), ENV_STATE_DIR: self._state_dir,
                ENV_SUPERVISOR: str(self._supervisor), ENV_SUPERVISOR_ADMIN: self.supervisor_admin}

    def follow_supervisor(self) -> None:
        """Have the kernel SIGTERM this process when the supervisor dies; raises
        StartupError if it is gone already."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise StartupError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
        # it may have died before the line above: then we were handed to another parent
        if os.getppid() != self._supervisor:
            raise StartupError(f"worker {self.id}: the supervisor (pid {self._supervisor}) is gone")

    def adapt(self, config: Config) -> Config:
        """``config`` as this worker uses it: its own admin socket and audit file, the supervisor's state."""
        server = dataclasses.replace(config.server, state_dir=self._state_dir)
        if server.admin_socket is not None:
            server = dataclasses.replace(server, admin_socket=worker_path(server.admin_socket, self.id))
        audit = config.audit
        if audit.path != "-":
            audit = dataclasses.replace(audit, path=worker_path(audit.path, self.id))
        return dataclasses.replace(config, server=server, audit=audit)

    def socket_for(self, address: ListenAddress) -> socket.socket | None:
        """The inherited listening socket for ``address``, if the supervisor bound one."""
        fd = self._fds.get(address.spec)
        if fd is None:
            return None
        family = socket.AF_UNIX if address.path is not None else socket.AF_INET6 if ":" in (address.host or "") \
            else socket.AF_INET
        return socket.socket(family, socket.SOCK_STREAM, fileno=fd)
