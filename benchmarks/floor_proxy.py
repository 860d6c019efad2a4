"""The floor under relayd: the least a reverse proxy on uvloop + httptools can do.

Bodiless requests only, no checks of any kind, no audit, no metrics, no timeouts: the
request line and Host go to a pooled keep-alive upstream connection, the whole answer
comes back with its Content-Length. Whatever relayd costs above this, per request, is
relay's own work (routing, strictness, identity, audit, metrics, error handling); what this
costs is Python, uvloop and the kernel.

    python -m benchmarks.floor_proxy --listen 127.0.0.1:8091 --upstream 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One pooled keep-alive connection to the upstream, carrying one request at a time."""

    def __init__(self, idle: list[Upstream]) -> None:
        self._idle = idle
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: Client | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, client: Client, head: list[bytes]) -> None:
        assert self._transport is not None
        self._client = client
        self._transport.writelines(head)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        client, self._client = self._client, None
        body, self._body = b"".join(self._body), []
        if client is not None:
            client.answer(self._parser.get_status_code(), body)
        self._idle.append(self)


class Client(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        head = [self._parser.get_method(), b" ", self._url, b" HTTP/1.1\r\nHost: ",
                self._pool.host, b"\r\n\r\n"]
        self._url = b""
        self._pool.send(self, head)

    def answer(self, status: int, body: bytes) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._transport.writelines((b"HTTP/1.1 %d -\r\nContent-Length: %d\r\n" % (status, len(body)),
                                    b"\r\n" if self._keep_alive else b"Connection: close\r\n\r\n", body))
        if not self._keep_alive:
            self._transport.close()


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host = f"{host}:{port}".encode("ascii")
        self._address = (host, port)
        self._idle: list[Upstream] = []

    def send(self, client: Client, head: list[bytes]) -> None:
        if self._idle:
            self._idle.pop().send(client, head)
        else:
            asyncio.get_running_loop().create_task(self._connect_and_send(client, head))

    async def _connect_and_send(self, client: Client, head: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self._idle), *self._address)
        upstream.send(client, head)


async def serve(listen: str, upstream: str) -> None:
    up_host, _, up_port = upstream.rpartition(":")
    pool = Pool(up_host, int(up_port))
    loop = asyncio.get_running_loop()
    server: asyncio.Server
    if listen.startswith("unix:"):
        server = await loop.create_unix_server(lambda: Client(pool), listen[len("unix:"):], backlog=1024)
    else:
        host, _, port = listen.rpartition(":")
        server = await loop.create_server(lambda: Client(pool), host, int(port), backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT or unix:PATH")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the upstream")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
