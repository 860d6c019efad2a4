"""A nats-server of the test's own, with JetStream on file storage in its own directory,
on a free loopback port; signalled only by the PID it was started with. It can be killed
(SIGKILL) and started again on the same port and store, and read back with nats-py."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.js import JetStreamContext

from .procs import Service, free_port

#: the nats-server binary, None when it is not installed
NATS_SERVER = shutil.which("nats-server")

T = TypeVar("T")


class NatsServer:
    def __init__(self, workdir: Path, name: str = "nats", max_payload: int | None = None) -> None:
        assert NATS_SERVER is not None, "nats-server is not installed"
        self.name = name
        self.directory = workdir / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.max_payload = max_payload
        self.service: Service | None = self._start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _start(self) -> Service:
        assert NATS_SERVER is not None
        argv = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory / "store")]
        if self.max_payload is not None:
            config = self.directory / "limits.conf"
            config.write_text(f"max_payload: {self.max_payload}\n")
            argv += ["-c", str(config)]
        service = Service(self.name, argv, self.directory.parent / f"{self.name}.log")
        service.wait_ready([("127.0.0.1", self.port)])
        return service

    def kill(self) -> None:
        """SIGKILL, and reap it: what it acknowledged is in its file store."""
        assert self.service is not None
        self.service.send_signal(signal.SIGKILL)
        self.service.wait_exit(10)
        self.service.stop()
        self.service = None

    def restart(self) -> None:
        self.service = self._start()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def _with_jetstream(self, use: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        """``use``'s answer, given a JetStream context on a connection of its own."""
        async def connected() -> T:
            client = await nats.connect(self.url, connect_timeout=5, allow_reconnect=False)
            try:
                return await use(client.jetstream())
            finally:
                await client.close()
        return asyncio.run(connected())

    def messages(self, stream: str) -> list[Any]:
        """Every message the stream holds, oldest first (each with .data, .headers, .seq)."""
        async def read(js: JetStreamContext) -> list[Any]:
            state = (await js.stream_info(stream)).state
            if not state.messages:
                return []
            return [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]
        return self._with_jetstream(read)

    def stream_info(self, stream: str) -> Any:
        return self._with_jetstream(lambda js: js.stream_info(stream))

    def add_stream(self, **config: Any) -> None:
        self._with_jetstream(lambda js: js.add_stream(**config))
