"""Conditional GETs (RFC 9110 §13) around relay's response cache.

Two directions. A client's ``If-None-Match`` / ``If-Modified-Since`` is answered by relay
from a stored (or just fetched) answer's validators (``not_modified``: 304 or the whole
answer), so the client's own conditionals never reach the upstream of a caching flow
(``without_conditionals``): a request that misses fetches the whole answer, which can be
kept. A stale entry that has validators is revalidated with the upstream: the request goes
on with the entry's ``ETag`` and ``Last-Modified`` as its conditionals
(``revalidation_headers``), so that a 304 can only mean "the stored answer is still good".
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parsedate_to_datetime

from relay.header_block import header_values, list_items, without_fields

_CONDITIONALS = (b"if-none-match", b"if-modified-since")

#: the stored fields a 304 carries (RFC 9110 §15.4.5), with Last-Modified for clients
#: that validate by date
NOT_MODIFIED_FIELDS = frozenset(
    (b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"))


def _opaque(tag: bytes) -> bytes:
    # If-None-Match compares weakly: W/"x" and "x" are the same tag
    return tag[2:] if tag.startswith(b"W/") else tag


def etag_listed(candidates: Iterable[bytes], tag: bytes, weak: bool = True) -> bool:
    """Whether ``tag`` is among the ETags a client listed (or it listed ``*``). Weakly
    (If-None-Match, RFC 9110 §8.8.3.2) ``W/"x"`` and ``"x"`` are one tag; strongly (under a
    Range) a weak tag on either side matches nothing."""
    for candidate in candidates:
        if candidate == b"*":
            return True
        if weak:
            if _opaque(candidate) == _opaque(tag):
                return True
        elif candidate == tag and not tag.startswith(b"W/"):
            return True
    return False


def _seconds(value: bytes) -> float | None:
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def not_modified(request_headers: bytes, etag: bytes | None, last_modified: bytes | None) -> bool:
    """Whether a GET or HEAD with ``request_headers`` gets 304 for a stored answer with these
    validators. ``If-None-Match`` decides when present; ``If-Modified-Since`` only without
    it, and an unreadable date is ignored (RFC 9110 §13.2.2)."""
    tags = list_items(header_values(request_headers, b"if-none-match"))
    if tags:
        return b"*" in tags or (etag is not None and etag_listed(tags, etag))
    since = header_values(request_headers, b"if-modified-since")
    if not since or last_modified is None:
        return False
    asked, modified = _seconds(since[0]), _seconds(last_modified)
    return asked is not None and modified is not None and modified <= asked


def without_conditionals(forward: bytes) -> bytes:
    """The header block to forward for a request the cache could not answer."""
    lowered = forward.lower()
    if b"if-none-match" not in lowered and b"if-modified-since" not in lowered:
        return forward
    return without_fields(forward, _CONDITIONALS)


def revalidation_headers(forward: bytes, etag: bytes | None, last_modified: bytes | None) -> bytes:
    """The header block to forward when revalidating an entry with these validators."""
    block = without_conditionals(forward)
    if etag is not None:
        block += b"If-None-Match: " + etag + b"\r\n"
    if last_modified is not None:
        block += b"If-Modified-Since: " + last_modified + b"\r\n"
    return block
