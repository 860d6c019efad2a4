"""The fast path in plain Python, part 1: header scanning (the twin of
``relay/_fastpath_headers.pxi``; see ``relay._fastpath_py``).

``scan_headers`` checks the header pairs httptools delivered, pulls out what relay needs
and builds the header block forwarded upstream, leaving out what a ``HeaderRules`` (built
once per flow) strips.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from relay.errors import BadRequest
from relay.http_rules import CONNECTION_FIELDS

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

#: Headers relay never forwards because it sets them itself: hop-by-hop and framing
#: (relay.http_rules), Proxy-Authorization, and the ones it rewrites (Host, X-Forwarded-For,
#: Expect).
_NOT_FORWARDED = frozenset(name.encode("ascii") for name in CONNECTION_FIELDS) | {
    b"proxy-authorization", b"host", b"content-length", b"expect", b"x-forwarded-for",
}  # fmt: skip
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
