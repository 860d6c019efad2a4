"""The fast path in plain Python: the readable, executable spec of ``relay/_fastpath.pyx``.

Every function here has a compiled twin with the same name, signature, results and
error texts; ``relay.fastpath`` picks one of the two. The tests run against both and a
differential property test holds them to each other, so change the two together.

Sections (one per fast-path job):

1. header scanning: ``scan_headers`` checks the header pairs httptools delivered,
   pulls out what relay needs and builds the header block forwarded upstream, leaving out
   what a ``HeaderRules`` (built once per flow) strips.
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
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, NoReturn, TypeVar

from relay.errors import BadRequest

if TYPE_CHECKING:
    from relay.identity.claims import Identity

__all__ = ["LAST_CHUNK", "ChunkedDecoder", "HeaderRules", "HeaderScan", "TokenCache", "encode_chunk",
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
#: Names relay reads itself: a header spelled like one of them with `_` is never forwarded.
_READ = _NOT_FORWARDED | {b"authorization", b"idempotency-key"}
#: relay owns this namespace downstream; inbound values would be spoofed identity.
_RELAY_PREFIX = b"x-relay-"
_MAX_CONTENT_LENGTH_DIGITS = 18  # fits a signed 64-bit integer


def _fold(name: bytes) -> bytes:
    """The name as CGI, WSGI, Rack and PHP upstreams read it: case and `_` versus `-` ignored."""
    return name.lower().replace(b"_", b"-")


@dataclass(frozen=True, slots=True, init=False)
class HeaderRules:
    """Which headers ``scan_headers`` keeps from ``forward`` besides those it always drops.

    ``names`` are stripped whole and ``prefixes`` strip every name that starts with one;
    both are given in any case and spelling, and kept folded (lowercase, `_` as `-`), since
    a header is compared folded too. ``underscores`` False (nginx's default,
    ``underscores_in_headers off``) ignores every header whose name holds a `_`, as if it
    had not been sent; True forwards them unless their folded name is stripped, relay's
    own (``X-Relay-*``) or one relay reads (Content-Length, X-Forwarded-For, ...).
    Built once (per flow), used for every request.
    """

    names: frozenset[bytes]
    prefixes: tuple[bytes, ...]
    underscores: bool

    def __init__(self, names: Iterable[bytes], prefixes: Iterable[bytes], *, underscores: bool) -> None:
        folded = tuple(_fold(_checked(prefix)) for prefix in prefixes)
        if b"" in folded:
            raise ValueError("an empty prefix would strip every header")
        object.__setattr__(self, "names", frozenset(_fold(_checked(name)) for name in names))
        object.__setattr__(self, "prefixes", folded)
        object.__setattr__(self, "underscores", bool(underscores))

    def _strips(self, folded: bytes) -> bool:
        """Whether a header of this folded name is stripped."""
        return folded in self.names or folded.startswith(self.prefixes)


def _checked(name: bytes) -> bytes:
    if type(name) is not bytes:
        raise TypeError("header rules hold bytes")
    return name


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


def scan_headers(headers: Iterable[tuple[BytesLike, BytesLike]], rules: HeaderRules) -> HeaderScan:
    """Check one request's headers and extract what relay needs, in one pass.

    ``headers`` are the (name, value) pairs of httptools' ``on_header`` in arrival order.
    Values lose surrounding spaces and tabs first (RFC 9110 §5.5; llhttp strips only the
    leading ones).

    Raises BadRequest (whose text names the rule) for a name that is not a token, a value
    with a control character, a second Host, Authorization, Idempotency-Key, Content-Length or
    Transfer-Encoding, a Content-Length that is not 1-18 digits, a Transfer-Encoding other
    than ``chunked``, both Content-Length and Transfer-Encoding, or a Connection option that
    is not a token.

    A name holding `_` is checked like any other, then, unless ``rules.underscores``, ignored
    entirely: it is never read as Host, Authorization, Content-Length or any other header, nor
    forwarded (upstreams that read `_` as `-` would take it for the header it imitates).

    ``forward`` keeps every header, in order and original case, except those ``rules``
    strip, those relay sets itself (hop-by-hop, framing, Host, Expect, X-Forwarded-For), those
    named by a Connection option (RFC 9110 §7.6.1), every ``X-Relay-*`` and, when kept at
    all, a name with `_` that folds onto one of those or onto a name relay reads.
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
        if b"_" in lname:
            if not rules.underscores:
                continue
            folded = _fold(lname)
            if folded in _READ or folded.startswith(_RELAY_PREFIX) or rules._strips(folded):
                continue
            candidates.append((lname, name, value))
            continue
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
        if lname in _NOT_FORWARDED or lname.startswith(_RELAY_PREFIX) or rules._strips(lname):
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


# ---------------------------------------------------------------------------------------
# 3. Chunked transfer coding (RFC 9112 §7.1)
# ---------------------------------------------------------------------------------------

_HEX_VALUES = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_TCHARS = frozenset(c for c in range(256) if _TOKEN.fullmatch(bytes([c])))
#: HTAB, SP, VCHAR and obs-text: a field value's bytes, and a quoted string's besides " and \
_VALUE_CHARS = frozenset(range(256)) - frozenset(_FORBIDDEN_IN_VALUE)
_CR, _LF, _SEMICOLON, _EQUALS, _COLON, _DQUOTE, _BACKSLASH = b'\r\n;=:"\\'
_CRLF = b"\r\n"
_LIMIT = 2**63 - 1  # the compiled decoder counts in signed 64 bits

#: Ends a chunked body: the last chunk and an empty trailer section.
LAST_CHUNK = b"0\r\n\r\n"

_Payload = TypeVar("_Payload", bytes, bytearray, memoryview)


class _Chunked(IntEnum):
    """ChunkedDecoder's states, in message order. Up to EXT_QUOTED_END the decoder is in a
    chunk-size line, from TRAILER_START to TRAILER_VALUE in a trailer field line; both kinds
    of line are capped."""

    SIZE_START = 0  # the first hex digit of a chunk size
    SIZE = 1  # more hex digits, ";" or CR
    EXT_NAME_START = 2  # after ";": an extension name's first tchar
    EXT_NAME = 3  # more tchars, "=", ";" or CR
    EXT_VALUE_START = 4  # after "=": a tchar or the opening quote
    EXT_VALUE = 5  # more tchars, ";" or CR
    EXT_QUOTED = 6  # qdtext, a backslash or the closing quote
    EXT_QUOTED_PAIR = 7  # the byte a backslash escapes
    EXT_QUOTED_END = 8  # ";" or CR after the closing quote
    SIZE_LF = 9  # the LF ending the size line
    DATA = 10  # chunk data, _remaining bytes of it
    DATA_CR = 11  # the CR after chunk data
    DATA_LF = 12  # the LF after chunk data
    TRAILER_START = 13  # a trailer field name's first tchar, or the CR of the empty last line
    TRAILER_NAME = 14  # more tchars or ":"
    TRAILER_VALUE = 15  # field-value bytes or CR
    TRAILER_LF = 16  # the LF ending a trailer field line
    END_LF = 17  # the LF ending the message
    DONE = 18  # the message is complete: later bytes are not the decoder's
    FAILED = 19  # a violation was raised; every later feed raises it again


class ChunkedDecoder:
    """Decodes one chunked message body (RFC 9112 §7.1), fed in pieces split anywhere.

    ``feed(data)`` returns the payload runs found in ``data``, in order: memoryviews into
    ``data`` when it is ``bytes`` (nothing is copied), else ``bytes`` copies, since the
    caller may reuse a writable buffer once ``feed`` returns. ``done`` turns true once the
    last chunk and the trailer section have been consumed; ``tail`` is then the offset in
    the data fed last where the bytes after the message (a pipelined request) begin. While
    the message goes on, ``tail`` is ``len(data)``; once done, ``feed`` consumes nothing: it
    returns [] and sets ``tail`` to 0.

    Strict, because two parsers reading one body differently is request smuggling:

    - a chunk size is 1 or more hex digits, nothing else (no sign, "0x" or whitespace), and
      at most ``max_chunk``;
    - extensions are ``;name`` or ``;name=value``, the value a token or a quoted string, and
      are ignored. The whitespace RFC 9112 tolerates around ";" and "=" is refused: no client
      sends it, and whitespace next to a chunk size is what smuggling probes are made of;
    - the size line, extensions included, holds at most ``max_line`` bytes before its CRLF;
    - every line ends in CRLF: a bare CR or LF is an error, as is chunk data not followed
      by CRLF;
    - the trailer section is read and dropped: lines ``name:value`` (a token name, a field
      value without controls, no obs-fold), each at most ``max_line`` bytes and together at
      most ``max_trailers`` (CRLFs not counted).

    The first violation raises ``BadRequest`` with a short reason, at the first byte that
    makes it certain, wherever the input was split. The decoder then stays failed: every
    later ``feed`` raises the same reason.
    """

    __slots__ = ("_max_chunk", "_max_line", "_max_trailers", "_state", "_remaining", "_line",
                 "_trailer_bytes", "_tail", "_error")  # fmt: skip

    def __init__(self, max_chunk: int = 2**40, max_line: int = 4096, max_trailers: int = 16384) -> None:
        self._max_chunk = _checked_limit("max_chunk", max_chunk, 1)
        self._max_line = _checked_limit("max_line", max_line, 1)
        self._max_trailers = _checked_limit("max_trailers", max_trailers, 0)
        self._state = _Chunked.SIZE_START
        self._remaining = 0  # the chunk size being read, then the data bytes still to come
        self._line = 0  # bytes in the current size or trailer line so far
        self._trailer_bytes = 0
        self._tail = 0
        self._error = ""

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been consumed."""
        return self._state is _Chunked.DONE

    @property
    def tail(self) -> int:
        """Where in the data fed last the bytes after the message begin."""
        return self._tail

    def feed(self, data: BytesLike) -> list[memoryview | bytes]:
        """The payload runs in ``data``; raises BadRequest on a framing violation."""
        if self._state is _Chunked.FAILED:
            raise BadRequest(self._error)
        runs: list[memoryview | bytes] = []
        zero_copy = type(data) is bytes
        with memoryview(data).cast("B") as view:
            pos, end = 0, len(view)
            while pos < end and self._state is not _Chunked.DONE:
                if self._state is _Chunked.DATA:
                    stop = min(end, pos + self._remaining)
                    runs.append(view[pos:stop] if zero_copy else bytes(view[pos:stop]))
                    self._remaining -= stop - pos
                    pos = stop
                    if not self._remaining:
                        self._state = _Chunked.DATA_CR
                else:
                    self._state = self._frame_byte(view[pos])
                    pos += 1
        self._tail = pos
        return runs

    def _frame_byte(self, c: int) -> _Chunked:
        """The state after one byte that is not chunk data."""
        state = self._state
        if state <= _Chunked.EXT_QUOTED_END:
            if c == _LF:
                self._fail("bare LF in chunk size line")
            if c != _CR:
                self._line += 1
                if self._line > self._max_line:
                    self._fail("chunk size line too long")
            return self._size_line_byte(state, c)
        if _Chunked.TRAILER_START <= state <= _Chunked.TRAILER_VALUE:
            if c == _LF:
                self._fail("bare LF in trailer section")
            if c != _CR:
                self._line += 1
                self._trailer_bytes += 1
                if self._line > self._max_line:
                    self._fail("trailer line too long")
                if self._trailer_bytes > self._max_trailers:
                    self._fail("trailers too long")
            return self._trailer_byte(state, c)
        # The rest want the CR or LF that ends a line; a line starts after each LF.
        self._line = 0
        if state is _Chunked.SIZE_LF:
            if c != _LF:
                self._fail("bare CR in chunk size line")
            return _Chunked.DATA if self._remaining else _Chunked.TRAILER_START
        if state is _Chunked.DATA_CR:
            if c != _CR:
                self._fail("missing CRLF after chunk data")
            return _Chunked.DATA_LF
        if state is _Chunked.DATA_LF:
            if c != _LF:
                self._fail("missing CRLF after chunk data")
            return _Chunked.SIZE_START
        if c != _LF:  # TRAILER_LF or END_LF
            self._fail("bare CR in trailer section")
        return _Chunked.TRAILER_START if state is _Chunked.TRAILER_LF else _Chunked.DONE

    def _size_line_byte(self, state: _Chunked, c: int) -> _Chunked:
        """The state after one byte of a chunk-size line: size digits, then extensions."""
        if state is _Chunked.SIZE_START or state is _Chunked.SIZE:
            digit = _HEX_VALUES.get(c)
            if digit is not None:
                self._remaining = self._remaining * 16 + digit
                if self._remaining > self._max_chunk:
                    self._fail("chunk too large")
                return _Chunked.SIZE
            if state is _Chunked.SIZE and c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if state is _Chunked.SIZE and c == _CR:
                return _Chunked.SIZE_LF
            self._fail("bad chunk size")
        if state is _Chunked.EXT_NAME_START:
            if c in _TCHARS:
                return _Chunked.EXT_NAME
        elif state is _Chunked.EXT_NAME:
            if c in _TCHARS:
                return _Chunked.EXT_NAME
            if c == _EQUALS:
                return _Chunked.EXT_VALUE_START
            if c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if c == _CR:
                return _Chunked.SIZE_LF
        elif state is _Chunked.EXT_VALUE_START:
            if c in _TCHARS:
                return _Chunked.EXT_VALUE
            if c == _DQUOTE:
                return _Chunked.EXT_QUOTED
        elif state is _Chunked.EXT_VALUE or state is _Chunked.EXT_QUOTED_END:
            if c in _TCHARS and state is _Chunked.EXT_VALUE:
                return _Chunked.EXT_VALUE
            if c == _SEMICOLON:
                return _Chunked.EXT_NAME_START
            if c == _CR:
                return _Chunked.SIZE_LF
        elif state is _Chunked.EXT_QUOTED:
            if c == _DQUOTE:
                return _Chunked.EXT_QUOTED_END
            if c == _BACKSLASH:
                return _Chunked.EXT_QUOTED_PAIR
            if c in _VALUE_CHARS:
                return _Chunked.EXT_QUOTED
        elif c in _VALUE_CHARS:  # EXT_QUOTED_PAIR
            return _Chunked.EXT_QUOTED
        self._fail("bad chunk extension")

    def _trailer_byte(self, state: _Chunked, c: int) -> _Chunked:
        """The state after one byte of a trailer field line, or of the empty last line."""
        if state is _Chunked.TRAILER_START:
            if c == _CR:
                return _Chunked.END_LF
            if c in _TCHARS:
                return _Chunked.TRAILER_NAME
        elif state is _Chunked.TRAILER_NAME:
            if c in _TCHARS:
                return _Chunked.TRAILER_NAME
            if c == _COLON:
                return _Chunked.TRAILER_VALUE
        else:  # TRAILER_VALUE
            if c == _CR:
                return _Chunked.TRAILER_LF
            if c in _VALUE_CHARS:
                return _Chunked.TRAILER_VALUE
        self._fail("bad trailer")

    def _fail(self, reason: str) -> NoReturn:
        self._state = _Chunked.FAILED
        self._error = reason
        raise BadRequest(reason)


def _checked_limit(name: str, value: int, low: int) -> int:
    if not low <= value <= _LIMIT:
        raise ValueError(f"{name} must be between {low} and 2**63 - 1")
    return value


def encode_chunk(data: _Payload) -> tuple[bytes, _Payload, bytes]:
    """One chunk carrying ``data``, as the pieces ``(size line, data, b"\\r\\n")`` for
    ``transport.writelines``: ``data`` itself is passed through, never copied or joined.

    Raises ValueError for an empty ``data``: a chunk of size 0 would end the body.
    """
    size = memoryview(data).nbytes
    if not size:
        raise ValueError("an empty chunk would end the body")
    return b"%x\r\n" % size, data, _CRLF


def encode_chunks(pieces: Iterable[BytesLike]) -> list[BytesLike]:
    """The pieces of ``encode_chunk`` for every non-empty payload in ``pieces``, in one list,
    so that several payloads go out in one ``transport.writelines`` call."""
    framed: list[BytesLike] = []
    for piece in pieces:
        size = memoryview(piece).nbytes
        if size:
            framed += (b"%x\r\n" % size, piece, _CRLF)
    return framed
