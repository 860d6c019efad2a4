"""A raw-socket HTTP/1.1 client: sends exactly the bytes a test gives it.

Unlike a real client library it never fixes anything up, so tests can send malformed,
pipelined or smuggling requests, and it reports what came back as-is: status, header
pairs in order, the de-chunked body, and whether the server closed the connection.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: a TCP (host, port) pair or a Unix socket path
Address = tuple[str, int] | str
#: what a request is sent as; memoryviews let large bodies go out without copies
Piece = bytes | memoryview

READ_SIZE = 256 * 1024


class ConnectionClosed(Exception):
    """The server closed (or reset) the connection before a complete response."""


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def can_connect(address: Address) -> bool:
    try:
        connect(address, timeout=1.0).close()
    except OSError:
        return False
    return True


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The single value of a header; fails the test if it is repeated."""
        values = self.get_all(name)
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"{self.status} {self.reason} {self.headers} body={self.body[:200]!r}"


class RawConnection:
    """One client connection; ``send`` exact bytes, ``read_response`` parses what comes back."""

    def __init__(self, address: Address, timeout: float = 10.0) -> None:
        self.sock = connect(address, timeout)
        self._buf = bytearray()
        self._eof = False
        self._sender: threading.Thread | None = None
        self.send_error: OSError | None = None

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sender is not None:
            try:  # unblocks a sender stuck in sendall
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sender.join(timeout=10)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_in_background(self, pieces: Iterable[Piece]) -> None:
        """Send while the caller reads, so a server answering early or echoing a
        large body as it streams cannot deadlock the test. A failed send (the server
        closed or reset) is kept in ``send_error`` rather than raised."""

        def pump() -> None:
            try:
                for piece in pieces:
                    self.sock.sendall(piece)
            except OSError as exc:
                self.send_error = exc

        self._sender = threading.Thread(target=pump, daemon=True)
        self._sender.start()

    def wait_sent(self, timeout: float = 60.0) -> None:
        """Wait for ``send_in_background`` to finish; its error, if any, stays in send_error."""
        assert self._sender is not None
        self._sender.join(timeout)
        assert not self._sender.is_alive(), "sending the request did not finish"

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            data = self.sock.recv(READ_SIZE)
        except ConnectionResetError:
            data = b""
        if not data:
            self._eof = True
        self._buf += data
        return bool(data)

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if not self._fill():
                raise ConnectionClosed(f"EOF after {bytes(self._buf[:200])!r}")

    def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise ConnectionClosed(f"EOF with {len(self._buf)} of {size} body bytes")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _fields(self) -> list[tuple[str, str]]:
        fields = []
        while line := self._line():
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"malformed header line in response: {line!r}"
            fields.append((name, value.strip(" \t")))
        return fields

    def read_interim(self) -> int:
        """The status of the next response, which must be an interim one (100 Continue, ...)."""
        _, status, _ = self._status_line()
        self._fields()
        assert 100 <= status < 200, f"expected an interim response, got {status}"
        return status

    def read_response(self, head_request: bool = False) -> Response:
        """The next final response (1xx interim responses are skipped)."""
        while True:
            version, status, reason = self._status_line()
            headers = self._fields()
            if not 100 <= status < 200:
                break
        response = Response(version, status, reason, headers)
        if head_request or status in (204, 304):
            return response
        te = response.get("Transfer-Encoding")
        length = response.get("Content-Length")
        if te is not None:
            assert te.lower() == "chunked", f"unexpected response framing: {te}"
            response.body = self._chunked_body(response)
        elif length is not None:
            response.body = self._exactly(int(length))
        else:
            while self._fill():
                pass
            response.body = bytes(self._buf)
            self._buf.clear()
        return response

    def _status_line(self) -> tuple[str, int, str]:
        line = self._line().decode("latin-1")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        assert version.startswith("HTTP/") and code.isdigit(), f"bad status line {line!r}"
        return version, int(code), reason

    def _chunked_body(self, response: Response) -> bytes:
        pieces = []
        while size := int(self._line().split(b";", 1)[0], 16):
            pieces.append(self._exactly(size))
            assert self._exactly(2) == b"\r\n", "chunk not followed by CRLF"
        response.trailers = self._fields()
        return b"".join(pieces)

    def readable(self, timeout: float) -> bool:
        """Whether the server has sent something, or closed, within ``timeout`` seconds."""
        if self._buf or self._eof:
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the server has closed its side, with no further bytes sent
        (left-over bytes mean the server answered something else, so not closed)."""
        deadline = time.monotonic() + timeout
        while not self._eof and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self._fill()
            except TimeoutError:
                break
        return self._eof and not self._buf


def exchange(address: Address, request: bytes, timeout: float = 10.0) -> Response:
    """Send one request on a fresh connection and read one response."""
    with RawConnection(address, timeout) as conn:
        conn.send(request)
        return conn.read_response(head_request=request.startswith(b"HEAD "))


def request_bytes(method: str, target: str, headers: Iterable[tuple[str, str]] = (),
                  body: bytes | None = None, host: str = "relay.test") -> bytes:
    """A well-formed HTTP/1.1 request head (plus body, with Content-Length if given)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def chunked(body: bytes, size: int = 256 * 1024) -> Iterable[Piece]:
    """``body`` framed as chunks of ``size`` bytes, terminating chunk included."""
    view = memoryview(body)
    for start in range(0, len(body), size):
        piece = view[start : start + size]
        yield b"%x\r\n" % len(piece)
        yield piece
        yield b"\r\n"
    yield b"0\r\n\r\n"
