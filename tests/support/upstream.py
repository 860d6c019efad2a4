"""A recording HTTP/1.1 upstream for end-to-end tests, run as its own process.

    python upstream.py --log FILE (--tcp HOST:PORT | --unix PATH)

It shares no code with relay on purpose (standard library only, its own parser), so
a bug in relay's HTTP handling cannot hide behind the same bug here. Every request
produces two JSON lines in the log, flushed as they happen:

    {"phase": "head", "seq": N, "conn": C, "method", "target", "version", "headers": [[name, value], ...]}
    {"phase": "done", "seq": N, "complete": bool, "body_len", "sha256", "trailers": [...]}

"head" is written as soon as the header block is read, so a request that reached the
upstream is visible even if its body never completes; "conn" numbers the connection it
came on (1 for the first accepted). The query string steers the
answer (the options combine):

    status=N      answer with this status (default 200)
    body=echo     send the request body back; body=N sends pattern(N); body=subject sends
                  the request's X-Relay-Subject (an answer that differs per caller);
                  body=host sends its Host (an answer that differs per virtual host)
    fill=N        send N bytes of b"f" instead, made as they go out (answers of any size)
    te=chunked    frame the answer chunked instead of with Content-Length
    whole=1       send the head and the body in one write, as lighttpd and nginx send small
                  answers (else the head goes first, then the body)
    delay=S       wait S seconds (after reading the body) before answering
    read_delay=S  read the body slowly: S seconds between 64 KiB reads
    fail=reset    reset the connection instead of answering (SO_LINGER 0)
    fail=garbage  answer bytes that are not HTTP, then close
    fail=close    close without answering
    header=N:V    add this header field to the answer (may be given more than once)
    header_from=H add each value of the request's header H as a "N:V" field to the answer
                  (answers to one target whose fields differ per request)
    validate=1    answer 304 without a body when the request's If-None-Match names the
                  ETag given with header= or its If-Modified-Since is no earlier than the
                  Last-Modified given so (each answer still carries a new X-Upstream-Seq)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

READ_SIZE = 64 * 1024
MAX_LINE = 64 * 1024
HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
DIGITS = re.compile(r"[0-9]{1,18}")


def pattern(size: int) -> bytes:
    """Deterministic, non-periodic bytes: tests rebuild them to check what arrived."""
    return random.Random(size).randbytes(size)


class BadRequest(Exception):
    """The peer sent something this upstream cannot frame; the connection is dropped."""


class Reader:
    """Buffered reads from a socket; an empty read means the peer closed."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(READ_SIZE)
        self._buf += data
        return bool(data)

    def line(self) -> bytes | None:
        """One line without its CRLF/LF; None at a clean EOF between requests."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                raw = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return raw[:-1] if raw.endswith(b"\r") else raw
            if len(self._buf) > MAX_LINE:
                raise BadRequest("line too long")
            if not self._fill():
                if self._buf:
                    raise BadRequest("EOF inside a line")
                return None

    def some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, at least one; raises on EOF."""
        if not self._buf and not self._fill():
            raise BadRequest("EOF inside the body")
        piece = bytes(self._buf[:limit])
        del self._buf[:limit]
        return piece


class Log:
    """Appends JSON lines; one lock so lines from concurrent connections never interleave."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._seq = 0
        self._conns = 0

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def next_conn(self) -> int:
        with self._lock:
            self._conns += 1
            return self._conns

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()


def read_head(reader: Reader) -> tuple[str, str, str, list[list[str]]] | None:
    """Request line and headers, latin-1 decoded and otherwise untouched."""
    line = reader.line()
    while line == b"":  # tolerate stray blank lines between requests (RFC 9112 2.2)
        line = reader.line()
    if line is None:
        return None
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3:
        raise BadRequest(f"request line {line!r}")
    headers = read_fields(reader)
    return parts[0], parts[1], parts[2], headers


def read_fields(reader: Reader) -> list[list[str]]:
    fields: list[list[str]] = []
    while True:
        line = reader.line()
        if line is None:
            raise BadRequest("EOF inside the header block")
        if not line:
            return fields
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest(f"header line {line!r}")
        fields.append([name, value.strip(" \t")])


def header(headers: list[list[str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


def body_pieces(reader: Reader, headers: list[list[str]], trailers: list[list[str]]) -> Iterator[bytes]:
    """The request body as it arrives, de-chunked; chunked trailers land in ``trailers``."""
    te = header(headers, "Transfer-Encoding")
    if te:
        if [v.lower() for v in te] != ["chunked"]:
            raise BadRequest(f"transfer-encoding {te!r}")
        while True:
            size_line = reader.line()
            if size_line is None:
                raise BadRequest("EOF before a chunk size")
            digits = size_line.split(b";", 1)[0]
            if not HEX.fullmatch(digits):
                raise BadRequest(f"chunk size {size_line!r}")
            size = int(digits, 16)
            if size == 0:
                trailers.extend(read_fields(reader))
                return
            while size:
                piece = reader.some(min(size, READ_SIZE))
                size -= len(piece)
                yield piece
            if reader.line() != b"":
                raise BadRequest("chunk not followed by CRLF")
    lengths = header(headers, "Content-Length")
    if len(lengths) > 1 or (lengths and not DIGITS.fullmatch(lengths[0])):
        raise BadRequest(f"content-length {lengths!r}")
    remaining = int(lengths[0]) if lengths else 0
    while remaining:
        piece = reader.some(min(remaining, READ_SIZE))
        remaining -= len(piece)
        yield piece


def frame(body: bytes, chunked: bool) -> Iterator[bytes]:
    if not chunked:
        if body:  # nothing to send must not become a send: the peer may be gone already
            yield body
        return
    for start in range(0, len(body), READ_SIZE):
        piece = body[start : start + READ_SIZE]
        yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    yield b"0\r\n\r\n"


def filled(size: int, chunked: bool) -> Iterator[bytes]:
    """``size`` bytes of b"f" in READ_SIZE pieces, framed like ``frame``; never held whole."""
    block = b"f" * READ_SIZE
    while size:
        piece = block[: min(size, READ_SIZE)]
        size -= len(piece)
        yield b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


def serve_one(conn: socket.socket, number: int, reader: Reader, log: Log) -> bool:
    """Handle one request; returns whether the connection may carry another."""
    head = read_head(reader)
    if head is None:
        return False
    method, target, version, headers = head
    seq = log.next_seq()
    log.write({"phase": "head", "seq": seq, "conn": number, "method": method, "target": target,
               "version": version, "headers": headers})
    query = parse_qs(urlsplit(target).query)
    options = {k: v[-1] for k, v in query.items()}
    read_delay = float(options.get("read_delay", "0"))
    digest = hashlib.sha256()
    received: list[bytes] = []
    trailers: list[list[str]] = []
    total = 0
    complete = False
    try:
        for piece in body_pieces(reader, headers, trailers):
            digest.update(piece)
            total += len(piece)
            if options.get("body") == "echo":
                received.append(piece)
            if read_delay:
                time.sleep(read_delay)
        complete = True
    finally:
        log.write({"phase": "done", "seq": seq, "complete": complete, "body_len": total,
                   "sha256": digest.hexdigest(), "trailers": trailers})

    time.sleep(float(options.get("delay", "0")))
    fail = options.get("fail")
    if fail == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    if fail == "garbage":
        conn.sendall(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
        return False
    if fail == "close":
        return False

    if options.get("body") == "echo":
        body = b"".join(received)
    elif options.get("body") == "subject":
        body = ",".join(header(headers, "X-Relay-Subject")).encode("latin-1")
    elif options.get("body") == "host":
        body = ",".join(header(headers, "Host")).encode("latin-1")
    else:
        body = pattern(int(options.get("body", "0")))
    chunked = options.get("te") == "chunked"
    fill = int(options.get("fill", "0"))
    keep_alive = "close" not in ",".join(header(headers, "Connection")).lower()
    status = int(options.get("status", "200"))
    if options.get("validate") == "1" and unchanged(headers, query.get("header", [])):
        status, body, fill, chunked = 304, b"", 0, False
    lines = [f"HTTP/1.1 {status} Upstream", f"X-Upstream-Seq: {seq}",
             "Content-Type: application/octet-stream",
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {fill or len(body)}",
             "Connection: keep-alive" if keep_alive else "Connection: close",
             *query.get("header", []),
             *(header(headers, options["header_from"]) if "header_from" in options else [])]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    pieces = filled(fill, chunked) if fill else frame(body, chunked)
    if options.get("whole") == "1":
        conn.sendall(head + b"".join(pieces))
        return keep_alive
    conn.sendall(head)
    for piece in pieces:
        conn.sendall(piece)
    return keep_alive


def unchanged(request_headers: list[list[str]], answer_fields: list[str]) -> bool:
    """The request's conditionals hold for an answer with these "Name:value" fields."""
    answer = {name.strip().lower(): value.strip()
              for name, _, value in (field.partition(":") for field in answer_fields)}
    tags = [t.strip() for v in header(request_headers, "If-None-Match") for t in v.split(",")]
    if tags:
        return answer.get("etag") in tags
    since = header(request_headers, "If-Modified-Since")
    modified = answer.get("last-modified")
    return bool(since and modified) and parsedate_to_datetime(modified) <= parsedate_to_datetime(since[0])


def handle(conn: socket.socket, log: Log) -> None:
    reader = Reader(conn)
    number = log.next_conn()
    try:
        while serve_one(conn, number, reader, log):
            pass
    except (BadRequest, ValueError, OSError) as exc:
        print(f"upstream: dropping connection: {exc!r}", file=sys.stderr, flush=True)
    finally:
        conn.close()


def listen(args: argparse.Namespace) -> socket.socket:
    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(args.unix)
    else:
        host, _, port = args.tcp.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
    sock.listen(128)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", help="HOST:PORT")
    where.add_argument("--unix", help="socket path")
    args = parser.parse_args()
    server = listen(args)
    with open(args.log, "a", encoding="utf-8") as stream:
        log = Log(stream)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn, log), daemon=True).start()


if __name__ == "__main__":
    main()
