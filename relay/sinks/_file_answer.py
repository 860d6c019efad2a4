"""What to answer for a file: validators, conditional requests, ranges, the media type.

Pure functions over the file's ``stat`` and the request's header block, so they can be
tested without sockets. They answer as lighttpd answers for its static files, so a
client sees the same whichever of the two sends a file:

* ``ETag`` is lighttpd's (``etag.use-inode``, ``-size`` and ``-mtime``, its defaults): a
  32-bit shift-xor hash of inode, size, mtime seconds and nanoseconds, in quotes. An
  ETag a client got through lighttpd's X-Sendfile therefore validates against relay
  and the other way round. ``Last-Modified`` is the mtime as an HTTP date.
* ``If-None-Match`` (weak comparison, strong under ``Range``) decides when present and
  then ``If-Modified-Since`` is ignored; otherwise ``If-Modified-Since`` equal to
  ``Last-Modified`` or not older than the mtime gives 304. An unreadable date is ignored.
* ``Range`` on GET over HTTP/1.1 for a non-empty file: ``bytes=`` specs (``a-b``, ``a-``,
  ``-n``), unreadable or unsatisfiable ones ignored; none satisfiable is 416 with
  ``Content-Range: bytes */SIZE``. Ranges that overlap or lie within 80 bytes of each
  other are merged; one range left is a 206, several are answered with the whole file
  (200), which RFC 9110 allows, where lighttpd sends multipart/byteranges. ``If-Range``
  must equal the ETag (or the Last-Modified date) exactly, else the whole file is sent.
* The media type comes from the name's last extension (the system's mime.types);
  ``text/*`` gets ``; charset=utf-8``, unknown ones ``application/octet-stream``.
"""

from __future__ import annotations

import email.utils
import functools
import mimetypes
import os
from dataclasses import dataclass

from relay.conditional import etag_listed

#: the request headers a file answer depends on (lowercase)
_ASKED = frozenset((b"range", b"if-range", b"if-none-match", b"if-modified-since", b"x-sendfile-type"))
#: more ranges than this in one Range header are not looked at (a client asking for many
#: small pieces is broken or hostile)
_MAX_RANGES = 10
#: ranges closer than this are merged: a second part would cost about as much in framing
_MERGE_GAP = 80
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Asked:
    """The request's conditional and range headers, as sent (several of one name joined
    with ", ", as for any list field)."""

    range: bytes | None = None
    if_range: bytes | None = None
    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    sendfile_type: bytes | None = None


def read_asked(forward: bytes) -> Asked:
    """The headers a file answer looks at, from a request's forwarded header block
    (``Name: value\\r\\n`` lines, values already stripped: see scan_headers)."""
    found: dict[bytes, bytes] = {}
    for line in forward.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        name = name.lower()
        if name in _ASKED:
            found[name] = found[name] + b", " + value if name in found else value
    if not found:
        return _NOTHING
    return Asked(found.get(b"range"), found.get(b"if-range"), found.get(b"if-none-match"),
                 found.get(b"if-modified-since"), found.get(b"x-sendfile-type"))


_NOTHING = Asked()


def etag(info: os.stat_result) -> bytes:
    """lighttpd's ETag for a file of this ``stat`` (inode, size, mtime to the nanosecond)."""
    words = (info.st_ino, info.st_size, int(info.st_mtime), info.st_mtime_ns % 1_000_000_000)
    data = b"".join((word & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") for word in words)
    value = len(data)
    for byte in data:
        value = ((value << 5) ^ (value >> 27) ^ byte) & _MASK
    return b'"%d"' % value


def http_date(seconds: int) -> bytes:
    return email.utils.formatdate(seconds, usegmt=True).encode("ascii")


def media_type(name: str) -> bytes:
    """By the last extension alone, as lighttpd's mimetype.assign: "a.tar.gz" is gzip data."""
    return _media_type(os.path.splitext(name)[1].lower())


@functools.lru_cache(maxsize=512)
def _media_type(extension: str) -> bytes:
    kind = mimetypes.types_map.get(extension) or mimetypes.common_types.get(extension)
    if kind is None:
        return b"application/octet-stream"
    if kind.startswith("text/"):
        kind += "; charset=utf-8"
    return kind.encode("ascii")


mimetypes.init()


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send: ``status``, the headers particular to it, and the piece of the file
    (``offset``, ``length``) its body is; ``length`` is 0 for 304 and 416."""

    status: int
    headers: bytes
    offset: int
    length: int


def decide(asked: Asked, info: os.stat_result, tag: bytes, modified: bytes,
           method: str, http10: bool) -> Answer:
    """The answer to a GET or HEAD of a file with this ``stat``, ETag and Last-Modified."""
    size = info.st_size
    validators = b"ETag: " + tag + b"\r\nLast-Modified: " + modified + b"\r\n"
    ranged = asked.range is not None and method == "GET" and not http10 and size > 0
    if _not_modified(asked, tag, modified, int(info.st_mtime), ranged):
        return Answer(304, validators, 0, 0)
    whole = Answer(200, validators + b"Accept-Ranges: bytes\r\n", 0, size)
    if not ranged or not _if_range_holds(asked.if_range, tag, modified):
        return whole
    assert asked.range is not None
    spans = _ranges(asked.range, size)
    if spans is None:
        return whole  # not a byte range: ignored
    if not spans:
        return Answer(416, b"Content-Range: bytes */%d\r\n" % size, 0, 0)
    if len(spans) > 1:
        return whole
    first, last = spans[0]
    return Answer(206, validators + b"Accept-Ranges: bytes\r\nContent-Range: bytes %d-%d/%d\r\n" % (first, last, size),
                  first, last - first + 1)


def _not_modified(asked: Asked, tag: bytes, modified: bytes, mtime: int, ranged: bool) -> bool:
    if asked.if_none_match is not None:
        return etag_listed((c.strip(b" \t") for c in asked.if_none_match.split(b",")), tag, weak=not ranged)
    since = asked.if_modified_since
    if since is None:
        return False
    if since == modified:
        return True
    try:
        parsed = email.utils.parsedate_tz(since.decode("latin-1"))
    except (TypeError, ValueError):
        parsed = None
    if parsed is None:
        return False  # an unreadable date: the file is sent
    return mtime <= email.utils.mktime_tz(parsed)


def _if_range_holds(if_range: bytes | None, tag: bytes, modified: bytes) -> bool:
    if if_range is None:
        return True
    return if_range == (tag if if_range.startswith(b'"') else modified)


def _ranges(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of a Range header, merged and in order (first, last byte);
    None when it is not a byte range at all."""
    if header[:6].lower() != b"bytes=":
        return None
    spans = []
    for spec in header[6:].split(b",")[:_MAX_RANGES]:
        span = _span(spec.strip(b" \t"), size)
        if span is not None:
            spans.append(span)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + _MERGE_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _span(spec: bytes, size: int) -> tuple[int, int] | None:
    start, dash, end = spec.partition(b"-")
    start, end = start.strip(b" \t"), end.strip(b" \t")
    if not dash or (start and not start.isdigit()) or (end and not end.isdigit()):
        return None
    if not start:
        count = int(end) if end else 0
        return (max(size - count, 0), size - 1) if count > 0 else None
    first = int(start)
    if first >= size:
        return None
    last = size - 1 if not end else min(int(end), size - 1)
    return (first, last) if first <= int(end or last) else None
