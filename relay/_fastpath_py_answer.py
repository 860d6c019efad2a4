"""6. Whole upstream answers (the readable spec of ``relay/_fastpath_answer.pxi``).

An upstream's answer to a bodiless GET usually arrives whole, in one read, and in the
plainest form HTTP/1.1 allows. ``whole_answer`` takes such an answer apart in one call,
where httptools would call back once per header, once for the head and once each for the
body and the end. It takes only the form it is sure of, and answers None for everything
else, which then goes to httptools as before: so its results are a subset of httptools',
never a second opinion on the edge cases (a differential test holds it to that).

The form: ``HTTP/1.1``, a final status of 200 to 599 other than 204 and 304 (both have no
body, whatever their headers say), a reason phrase of visible ASCII, spaces and tabs;
header names of token characters, values of visible ASCII, spaces and tabs (leading ones
dropped, trailing ones kept, as httptools does; ``scan_headers`` trims them), every line
ended by CRLF; exactly one ``Content-Length`` of digits, no ``Transfer-Encoding``; and
exactly that many body bytes after the head, nothing more.
"""

from __future__ import annotations

import re

#: at most this many headers in an answer taken whole (more: httptools)
MAX_WHOLE_HEADERS = 64

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VISIBLE = rb"[\t\x20-\x7e]*"
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) " + _VISIBLE + rb"\r\n")
_HEADER_LINE = re.compile(b"(" + _TOKEN + rb"):[ \t]*(" + _VISIBLE + rb")\r\n")
_MAX_LENGTH_DIGITS = 18


def whole_answer(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """``(status, headers, body)`` when ``data`` is one whole answer in the plain form
    above; None when it is not (or may not be): then httptools parses it."""
    line = _STATUS_LINE.match(data)
    if line is None:
        return None
    status = int(line[1])
    if status in (204, 304):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    at = line.end()
    while not data.startswith(b"\r\n", at):
        header = _HEADER_LINE.match(data, at)
        if header is None or len(headers) == MAX_WHOLE_HEADERS:
            return None
        name, value = header[1], header[2]
        folded = name.lower()
        if folded == b"transfer-encoding":
            return None
        if folded == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None  # several, or not plain digits: httptools decides
            length = int(value)
        headers.append((name, value))
        at = header.end()
    body_at = at + 2
    if length < 0 or len(data) - body_at != length:
        return None
    return status, headers, data[body_at:]
