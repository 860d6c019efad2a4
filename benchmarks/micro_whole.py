"""Micro-benchmark: whole heads taken apart in one call, against httptools' callbacks (CPU µs).

    python -m benchmarks.micro_whole [--repeat N]

Times, with the process CPU clock (best of N), what reading one message costs relay:
``whole_request`` and ``whole_answer`` (compiled and twin) beside httptools feeding
collectors that do what relay's connection callbacks do with the pieces (a list of
header pairs, the target, the status, keep-alive), for a head as wrk sends it, one as
lighttpd's mod_proxy forwards it (a 700-byte bearer token), and lighttpd's answer of a
100-byte file. Then one answer written to a socket under uvloop: its seven pieces with
``writelines`` (one writev) against ``b"".join`` and one ``write``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import timeit
from collections.abc import Callable

import httptools
import uvloop

from relay import _fastpath_py
from relay.fastpath import COMPILED, whole_answer, whole_request

TOKEN = b"Bearer eyJ" + b"Q" * 690
WRK = b"GET /bench/hello.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: " + TOKEN + b"\r\n\r\n"
PROXIED = (b"GET /bench/hello.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: " + TOKEN
           + b"\r\nX-Forwarded-For: 127.0.0.1\r\nX-Host: 127.0.0.1:8080\r\nX-Forwarded-Proto: http\r\n"
           b"Connection: close\r\n\r\n")
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"3880012345\"\r\n"
          b"Last-Modified: Thu, 03 Dec 2026 10:00:00 GMT\r\nContent-Length: 100\r\nAccept-Ranges: bytes\r\n"
          b"Date: Fri, 04 Dec 2026 19:00:00 GMT\r\nServer: lighttpd/1.4.69\r\n\r\n" + b"x" * 100)
PIECES = (b"HTTP/1.1 200 OK\r\n", b"Content-Type: text/plain\r\nETag: \"3880012345\"\r\n",
          b"X-Relay-Request-Id: 5f0c2a1e-0000002a\r\n", b"Content-Length: 100\r\n", b"", b"\r\n", b"x" * 100)


class RequestHead:
    """Collects what relay's connection keeps of a request head."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        pass


class Answer:
    """Collects what relay's upstream connection keeps of an answer."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.headers = []
        self.pieces = []


def _fed_request(head: bytes) -> Callable[[], None]:
    # a fresh parser each time: after Connection: close httptools takes nothing more (what
    # making it costs is measured apart and taken off)
    return lambda: RequestHead().parser.feed_data(head)


def cpu_us(fn: Callable[[], object], repeat: int, number: int = 50_000) -> float:
    """CPU µs per call of ``fn``: the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def _parsing(repeat: int) -> None:
    answer = Answer()
    making = cpu_us(RequestHead, repeat)
    rows = [
        ("wrk's GET", WRK, whole_request, _fastpath_py.whole_request, _fed_request(WRK), making),
        ("a GET lighttpd forwards", PROXIED, whole_request, _fastpath_py.whole_request, _fed_request(PROXIED), making),
        ("lighttpd's answer, 100 bytes", ANSWER, whole_answer, _fastpath_py.whole_answer,
         lambda: answer.parser.feed_data(ANSWER), 0.0),
    ]
    print(f"{'message':<30} {'whole, compiled':>16} {'whole, twin':>12} {'httptools':>10}   (CPU µs)")
    for name, data, whole, twin, fed, overhead in rows:
        assert whole(data) is not None and twin(data) is not None
        compiled = f"{cpu_us(lambda: whole(data), repeat):.2f}" if COMPILED else "not built"
        print(f"{name:<30} {compiled:>16} {cpu_us(lambda: twin(data), repeat):>12.2f} "
              f"{cpu_us(fed, repeat) - overhead:>10.2f}")


def _writing(repeat: int) -> None:
    async def measure() -> tuple[float, float]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
        writes = 0

        def drained() -> None:
            nonlocal writes
            writes += 1
            if writes % 64 == 0:  # keep the socket's buffer from filling
                try:
                    while theirs.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass

        def pieces() -> None:
            transport.writelines(PIECES)
            drained()

        def joined() -> None:
            transport.write(b"".join(PIECES))
            drained()

        figures = cpu_us(pieces, repeat), cpu_us(joined, repeat)
        transport.close()
        theirs.close()
        return figures

    pieces, joined = uvloop.run(measure())
    print(f"\nan answer of 7 pieces to a socket: writelines {pieces:.2f} µs, join + write {joined:.2f} µs (CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_whole")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    _parsing(args.repeat)
    _writing(args.repeat)


if __name__ == "__main__":
    main()
