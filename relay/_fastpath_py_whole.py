"""6. Whole heads (the readable spec of ``relay/_fastpath_whole.pxi``).

Most requests and answers arrive whole, in one read, and in the plainest form HTTP/1.1
allows: a bodiless GET from a client or lighttpd, an upstream's answer to it. httptools
calls back once per header and once each for the start, the target, the head, the body
and the end; ``whole_request`` and ``whole_answer`` take such a message apart in one call.
Each takes only the form it is sure of and answers None for everything else, which then
goes to httptools as before: their results are a subset of httptools', never a second
opinion on the edge cases (differential tests hold them to that).

What both take: lines ended by CRLF; header names of token characters, values of visible
ASCII, spaces and tabs (leading ones dropped, trailing ones kept, as httptools does;
``scan_headers`` trims them); at most ``MAX_WHOLE_HEADERS`` headers.

``whole_request``: ``GET`` or ``HEAD``, a target of visible ASCII, ``HTTP/1.1``; no
Content-Length, Transfer-Encoding or Upgrade, a Connection only of ``close`` or
``keep-alive`` (in any case, nothing around it); nothing after the head.

``whole_answer``: ``HTTP/1.1``, a final status of 200 to 599 other than 204 and 304 (both
have no body, whatever their headers say), a reason phrase of visible ASCII, spaces and
tabs; exactly one ``Content-Length`` of digits, no ``Transfer-Encoding``; and exactly that
many body bytes after the head, nothing more.
"""

from __future__ import annotations

import re

MAX_WHOLE_HEADERS = 64

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VISIBLE = rb"[\t\x20-\x7e]*"
_REQUEST_LINE = re.compile(rb"(GET|HEAD) ([\x21-\x7e]+) HTTP/1\.1\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) " + _VISIBLE + rb"\r\n")
_HEADER_LINE = re.compile(b"(" + _TOKEN + rb"):[ \t]*(" + _VISIBLE + rb")\r\n")
_MAX_LENGTH_DIGITS = 18

Headers = list[tuple[bytes, bytes]]


def whole_request(data: bytes) -> tuple[bytes, bytes, Headers, int, bool] | None:
    """``(method, target, headers, head_size, keep_alive)`` when ``data`` is one whole
    bodiless request head in the plain form above, ``head_size`` as relay counts it
    (target, names and values, 4 more a header); None when it is not, or may not be."""
    line = _REQUEST_LINE.match(data)
    if line is None:
        return None
    url = line[2]
    fields = _fields(data, line.end())
    if fields is None:
        return None
    headers, end = fields
    if end != len(data):
        return None  # a body, or a pipelined request: httptools
    keep_alive = True
    head_size = len(url)
    for name, value in headers:
        folded = name.lower()
        if folded in (b"content-length", b"transfer-encoding", b"upgrade"):
            return None
        if folded == b"connection":
            option = value.lower()
            if option == b"close":
                keep_alive = False
            elif option != b"keep-alive":
                return None  # a list, or other options: httptools reads them
        head_size += len(name) + len(value) + 4
    return line[1], url, headers, head_size, keep_alive


def whole_answer(data: bytes) -> tuple[int, Headers, bytes] | None:
    """``(status, headers, body)`` when ``data`` is one whole answer in the plain form
    above; None when it is not (or may not be): then httptools parses it."""
    line = _STATUS_LINE.match(data)
    if line is None:
        return None
    status = int(line[1])
    if status in (204, 304):
        return None
    fields = _fields(data, line.end())
    if fields is None:
        return None
    headers, body_at = fields
    length = -1
    for name, value in headers:
        folded = name.lower()
        if folded == b"transfer-encoding":
            return None
        if folded == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None  # several, or not plain digits: httptools decides
            length = int(value)
    if length < 0 or len(data) - body_at != length:
        return None
    return status, headers, data[body_at:]


def _fields(data: bytes, at: int) -> tuple[Headers, int] | None:
    """The header lines from ``at`` up to the empty line, and where the head ends."""
    headers: Headers = []
    while not data.startswith(b"\r\n", at):
        header = _HEADER_LINE.match(data, at)
        if header is None or len(headers) == MAX_WHOLE_HEADERS:
            return None
        headers.append((header[1], header[2]))
        at = header.end()
    return headers, at + 2
