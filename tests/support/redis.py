"""A redis-server of the test's own: a free loopback port, its own directory, no saving.

``RedisServer`` starts it (optionally with an fsynced append-only file, so what it
acknowledged survives SIGKILL), waits until it answers PING, and can stop it (SIGSTOP),
resume it, kill it (SIGKILL) and start it again on the same port and directory. Like the
other processes of the harness it is signalled only by the PID it was started with.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .procs import Service, free_port, poll_until

#: the redis-server binary, None when it is not installed
REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, workdir: Path, name: str = "redis", appendonly: bool = False) -> None:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        self.name = name
        self.directory = workdir / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.paused = False
        self.service = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A plain synchronous client, for tests to look at what the server holds."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def _start(self) -> Service:
        assert REDIS_SERVER is not None
        argv = [
            REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
        ]
        service = Service(self.name, argv, self.directory.parent / f"{self.name}.log")
        service.wait_ready([("127.0.0.1", self.port)])
        with self.client() as client:
            # accepting connections is not serving: an append-only file may still be loading
            poll_until(lambda: self._answers(client), 15, f"{self.name} to answer PING")
        return service

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.BusyLoadingError:
            return False

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing is answered."""
        self.service.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.service.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, and reap it: only what reached the append-only file survives."""
        self.resume()
        self.service.send_signal(signal.SIGKILL)
        self.service.wait_exit(10)
        self.service.stop()

    def restart(self) -> None:
        """Start again on the same port and directory (after ``kill`` or ``stop``)."""
        self.service = self._start()

    def stop(self) -> None:
        if self.paused:
            self.resume()  # a stopped process would sit on SIGTERM until SIGKILL
        self.service.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a test module (its tests keep to streams of their own)."""
    running = RedisServer(tmp_path_factory.mktemp("redis"))
    yield running
    running.stop()
