"""The upload target: an HTTP/1.1 server that reads every request body and drops it.

lighttpd's CGI path (lighttpd → pipe → ``cat >/dev/null``) tops out near 350 MB/s here,
less than the chains it would measure, so uploads go to this instead: a uvloop
BufferedProtocol receiving into one reused 1 MiB buffer, httptools finding where each
request ends (Content-Length or chunked; the body itself is never copied), and a fixed
200 answer. Keep-alive as the client asks.

    python -m benchmarks.discard --tcp 127.0.0.1:9001 --unix /path/discard.sock
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import httptools
import uvloop

BUFFER = 1 << 20
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\ndropped\n"
ANSWER_CLOSE = ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Discard(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.view = memoryview(bytearray(BUFFER))
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.parser.feed_data(self.view[:nbytes])
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    # httptools callback
    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(ANSWER)
        else:
            self.transport.write(ANSWER_CLOSE)
            self.transport.close()


async def serve(tcp: str, unix: str) -> None:
    loop = asyncio.get_running_loop()
    host, _, port = tcp.rpartition(":")
    servers = [await loop.create_server(Discard, host, int(port)),
               await loop.create_unix_server(Discard, unix)]
    os.chmod(unix, 0o600)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", required=True, help="HOST:PORT")
    parser.add_argument("--unix", required=True, help="socket path")
    args = parser.parse_args()
    uvloop.run(serve(args.tcp, args.unix))


if __name__ == "__main__":
    main()
