"""The fast path in plain Python: the readable, executable spec of ``relay/_fastpath.pyx``.

Every function here has a compiled twin with the same name, signature, results and
error texts; ``relay.fastpath`` picks one of the two. The tests run against both and a
differential property test holds them to each other, so change the two together.

Sections (one per fast-path job):

1. header scanning: ``scan_headers`` checks the header pairs httptools delivered,
   pulls out what relay needs and builds the header block forwarded upstream.
2. verified-token cache: ``TokenCache`` maps tokens already verified to their identity,
   bounded, so a repeated token costs one lookup instead of a signature check.
3. chunked transfer coding: ``ChunkedDecoder`` takes a chunked body apart as it arrives,
   handing back payload runs without copying them; ``encode_chunk``, ``encode_chunks`` and
   ``LAST_CHUNK`` frame outgoing payloads as pieces for ``transport.writelines``.

One file, unlike the compiled side's one include per job: it is the spec, read top to
bottom, and each section is short because Python states the rules without the speed tricks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Set
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, TypeVar

from relay.errors import BadRequest

if TYPE_CHECKING:
    from relay.identity.claims import Identity

__all__ = ["LAST_CHUNK", "ChunkedDecoder", "HeaderScan", "TokenCache", "encode_chunk",
           "encode_chunks", "scan_headers"]

#: What httptools may hand over; results are always plain bytes.
BytesLike = bytes | bytearray | memoryview

# ---------------------------------------------------------------------------------------
# 1. Header scanning
# ---------------------------------------------------------------------------------------

# RFC 9110 §5.6.2: a field name is a token of tchars.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: CR, LF, NUL, the other controls and DEL are never part of a field value;
# HTAB is whitespace and obs-text (0x80-0xff) is tolerated.
_FORBIDDEN_IN_VALUE = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
_OWS = b" \t"

#: Headers relay never forwards because it sets them itself: hop-by-hop (RFC 9110 §7.6.1),
#: framing, and the ones it rewrites (Host, X-Forwarded-For, Expect).
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
    }
)
#: relay owns this namespace downstream; inbound values would be spoofed identity.
_RELAY_PREFIX = b"x-relay-"
_MAX_CONTENT_LENGTH_DIGITS = 18  # fits a signed 64-bit integer


@dataclass(frozen=True, slots=True, eq=False)
class HeaderScan:
    """What relay needs from one request's header block. Read-only; made by ``scan_headers``.

    ``host``, ``authorization`` and ``idempotency_key`` are the header values, or None when
    absent; ``content_length`` is -1 when absent; ``chunked`` means ``Transfer-Encoding:
    chunked``; ``close``, ``keep_alive`` and ``upgrade`` come from Connection options (and
    ``upgrade`` also from an Upgrade header); ``expect`` is the lowercased Expect value (several
    Expect headers are joined with ", ", as for any list field); ``forwarded_for`` is the
    rightmost X-Forwarded-For element, or None when that element is empty or the header absent;
    ``forward`` is the ``Name: value\\r\\n`` block to send upstream.
    """

    host: bytes | None
    authorization: bytes | None
    content_length: int
    chunked: bool
    close: bool
    keep_alive: bool
    upgrade: bool
    expect: bytes | None
    idempotency_key: bytes | None
    forwarded_for: bytes | None
    forward: bytes


def scan_headers(headers: Iterable[tuple[BytesLike, BytesLike]], drop: Set[bytes]) -> HeaderScan:
    """Check one request's headers and extract what relay needs, in one pass.

    ``headers`` are the (name, value) pairs of httptools' ``on_header`` in arrival order.
    Values lose surrounding spaces and tabs first (RFC 9110 §5.5; llhttp strips only the
    leading ones). ``drop`` holds lowercase names (bytes) the caller wants kept from upstream.

    Raises BadRequest (whose text names the rule) for a name that is not a token, a value
    with a control character, a second Host, Authorization, Idempotency-Key, Content-Length or
    Transfer-Encoding, a Content-Length that is not 1-18 digits, a Transfer-Encoding other
    than ``chunked``, both Content-Length and Transfer-Encoding, or a Connection option that
    is not a token.

    ``forward`` keeps every header, in order and original case, except those in ``drop``,
    those relay sets itself (hop-by-hop, framing, Host, Expect, X-Forwarded-For), those named
    by a Connection option (RFC 9110 §7.6.1) and every ``X-Relay-*``.
    """
    host = authorization = expect = idempotency_key = forwarded_for = None
    content_length = -1
    chunked = close = keep_alive = upgrade = False
    connection_options: set[bytes] = set()
    candidates: list[tuple[bytes, bytes, bytes]] = []  # (lowercase name, name, value)

    for raw_name, raw_value in headers:
        name = _as_bytes(raw_name)
        value = _as_bytes(raw_value).strip(_OWS)
        if not _TOKEN.fullmatch(name):
            raise BadRequest("bad header name")
        # deleting the forbidden bytes is a fast scan in C; a shorter result means one was there
        if len(value.translate(None, _FORBIDDEN_IN_VALUE)) != len(value):
            raise BadRequest("bad header value")
        lname = name.lower()
        if lname == b"host":
            if host is not None:
                raise BadRequest("duplicate Host")
            host = value
        elif lname == b"authorization":
            if authorization is not None:
                raise BadRequest("duplicate Authorization")
            authorization = value
        elif lname == b"idempotency-key":
            if idempotency_key is not None:
                raise BadRequest("duplicate Idempotency-Key")
            idempotency_key = value
        elif lname == b"content-length":
            if content_length >= 0:
                raise BadRequest("duplicate Content-Length")
            if not (0 < len(value) <= _MAX_CONTENT_LENGTH_DIGITS and value.isdigit()):
                raise BadRequest("bad Content-Length")
            content_length = int(value)
        elif lname == b"transfer-encoding":
            if chunked:
                raise BadRequest("duplicate Transfer-Encoding")
            if value.lower() != b"chunked":
                raise BadRequest("unsupported Transfer-Encoding")
            chunked = True
        elif lname == b"connection":
            options = _connection_options(value)
            close = close or b"close" in options
            keep_alive = keep_alive or b"keep-alive" in options
            upgrade = upgrade or b"upgrade" in options
            connection_options.update(options)
        elif lname == b"upgrade":
            upgrade = True
        elif lname == b"expect":
            expect = value.lower() if expect is None else expect + b", " + value.lower()
        elif lname == b"x-forwarded-for":
            # Only the element the nearest proxy appended is trustworthy; an empty one means
            # the chain is malformed, so trust none rather than an earlier, client-made one.
            forwarded_for = value.rpartition(b",")[2].strip(_OWS) or None
        if lname in drop or lname in _NOT_FORWARDED or lname.startswith(_RELAY_PREFIX):
            continue
        candidates.append((lname, name, value))

    if content_length >= 0 and chunked:
        raise BadRequest("Content-Length with Transfer-Encoding")
    forward = b"".join(
        b"%s: %s\r\n" % (name, value)
        for lname, name, value in candidates
        if lname not in connection_options
    )
    return HeaderScan(host, authorization, content_length, chunked, close, keep_alive, upgrade,
                      expect, idempotency_key, forwarded_for, forward)  # fmt: skip


def _connection_options(value: bytes) -> list[bytes]:
    """The lowercased options of one Connection value; empty list elements are ignored."""
    options = []
    for element in value.split(b","):
        option = element.strip(_OWS)
        if not option:  # RFC 9110 §5.6.1.2: recipients accept empty list elements
            continue
        if not _TOKEN.fullmatch(option):
            raise BadRequest("bad Connection")
        options.append(option.lower())
    return options


def _as_bytes(data: BytesLike) -> bytes:
    """``data`` as bytes, without a copy when it already is bytes."""
    return data if type(data) is bytes else bytes(memoryview(data))



# ---------------------------------------------------------------------------------------
# 2. Verified-token cache
# ---------------------------------------------------------------------------------------


class _CacheEntry:
    __slots__ = ("identity", "generation", "expires_at", "referenced")

    def __init__(self, identity: Identity, generation: int, expires_at: float) -> None:
        self.identity = identity
        self.generation = generation
        self.expires_at = expires_at
        self.referenced = True  # hit since the CLOCK hand last passed


class TokenCache:
    """Already-verified tokens → their identity, at most ``capacity`` of them.

    Keyed on the raw token bytes; an entry serves only while the caller's key
    ``generation`` is the one it was stored with and ``now`` is not past its
    ``expires_at``. When full, CLOCK (second-chance) eviction picks the victim: a ring
    of slots and a hand that skips, once, every entry hit since it last passed, so
    tokens in use stay and dead ones (expired, old generation, one-off) go first.
    Amortized O(1) per insertion; a hit is one dict lookup.
    """

    __slots__ = ("_capacity", "_entries", "_ring", "_hand", "_hits", "_misses", "_evictions")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._entries: dict[bytes, _CacheEntry] = {}
        self._ring: list[bytes] = []  # slot → token
        self._hand = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, token: bytes, generation: int, now: float) -> Identity | None:
        """The identity stored for ``token``, or None on a miss, another generation or after expiry."""
        entry = self._entries.get(token)
        if entry is None or entry.generation != generation or now > entry.expires_at:
            self._misses += 1
            return None
        entry.referenced = True
        self._hits += 1
        return entry.identity

    def put(self, token: bytes, generation: int, identity: Identity, expires_at: float) -> None:
        """Store a verified ``token``; it serves until ``expires_at`` (seconds since the epoch)."""
        entry = self._entries.get(token)
        if entry is not None:
            entry.identity = identity
            entry.generation = generation
            entry.expires_at = expires_at
            entry.referenced = True
            return
        if len(self._ring) < self._capacity:
            slot = len(self._ring)
            self._ring.append(token)
        else:
            slot = self._evict()
            self._ring[slot] = token
        self._entries[token] = _CacheEntry(identity, generation, expires_at)

    def _evict(self) -> int:
        """Free the slot under the CLOCK hand's first unreferenced entry and return it."""
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < self._capacity else 0
            entry = self._entries[self._ring[slot]]
            if entry.referenced:
                entry.referenced = False
                continue
            del self._entries[self._ring[slot]]
            self._evictions += 1
            return slot

    def purge(self) -> None:
        """Forget every entry (the counters stay)."""
        self._entries.clear()
        self._ring.clear()
        self._hand = 0

    def stats(self) -> dict[str, int]:
        """size, capacity, hits, misses, evictions."""
        return {
            "size": len(self._entries),
            "capacity": self._capacity,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
        }
