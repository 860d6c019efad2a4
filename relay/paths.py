"""Request-target normalization: the one path relay routes on and the one it forwards.

Routing and forwarding must see the same path, or a request could be authorized for
one flow and reach the upstream as another (``/public/%2e%2e/admin``). So relay
decodes percent-escapes exactly once, resolves dot-segments, and forwards the result
re-encoded: the upstream never has to interpret an escape or a ``..`` itself.
Anything that could be read two ways is refused instead: an encoded ``/``, ``\\``
or ``#``, NUL and other control characters, a raw ``#``, empty segments, ``..``
above the root, malformed escapes and invalid UTF-8 (overlong forms included).

Upstreams differ in what they do after that, so relay also refuses what one of them
would turn into a dot-segment or a separator that relay did not see: a segment that
is empty, ``.`` or ``..`` once its ``;`` path parameter is cut off (Tomcat, Jetty and
Spring cut it: ``/public/..;/private`` is ``/private`` to them), an escape of an
escape of ``.``, ``/``, ``\\``, ``;``, ``%``, ``?``, ``#`` or a control character
(``%252e``: an upstream that decodes twice sees ``.``), and a character whose
compatibility form (NFKC) is one of ``./\\;%?#`` (``%EF%BC%8E`` is a full-width
``.``). An encoded ``;`` (``%3B``) is forwarded encoded, so no upstream reads it as
a parameter.

Most request paths are plain (``/orders/42``): they pass one regular expression and
are returned as they are. Repeated targets are answered from a small memo.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from relay.errors import BadRequest

__all__ = ["AsteriskForm", "normalize_path", "target_authority", "without_params"]


class AsteriskForm(BadRequest):
    """The request-target was ``*`` (``OPTIONS * HTTP/1.1``).

    A BadRequest unless the caller catches it to answer server-wide OPTIONS itself.
    """


# An origin-form target whose path is pchar-only segments, none starting with "." or
# ";" (so no dot-segment and no parameter on an empty name), with no "%" and no empty
# segment but a trailing "/"; group 1 is the path, group 2 the query.
_PLAIN = re.compile(
    rb"((?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-_~!$&'()*+,;=:@.]*)+/?|/)"
    rb"(?:\?([\x21\x22\x24-\x7e\x80-\xff]*))?"
)
# raw bytes never allowed in a path: CTLs, space, DEL, backslash, non-ASCII
_RAW_BAD = re.compile(rb"[\x00-\x20\x7f\\\x80-\xff]")
_QUERY_BAD = re.compile(rb"[\x00-\x20\x7f#]")
_ESCAPE_BAD = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# escapes that decode to "/", "\", "#" or a control character
_ESCAPE_FORBIDDEN = re.compile(rb"%(?:2[Ff]|5[Cc]|23|[01][0-9A-Fa-f]|7[Ff])")
# an escaped "%" starting the escape of ".", "/", "\", ";", "%", "?", "#" or a control
# character: one decoding more (some upstreams do it) and it is a separator or a dot
_DOUBLE_ESCAPE = re.compile(rb"%25(?:2[EeFf5]|5[Cc]|3[BbFf]|23|[01][0-9A-Fa-f]|7[Ff])")
_ENCODED_SEMICOLON = re.compile(rb"%3[Bb]")
# what relay gives a meaning to; no character may turn into one under NFKC
_SPECIAL = "./\\;%?#"
# RFC 3986 pchar minus unreserved (quote never escapes those) plus "/"
_KEEP = "/!$&'()*+,;=:@"
_DOT_NAMES = ("", ".", "..")

# Results are pure functions of the target, and most traffic repeats a few targets:
# a small memo makes a repeated target a dict hit. Cleared when full, so its size
# stays bounded whatever clients send; long targets are not kept.
_MEMO: dict[bytes, tuple[str, bytes, bytes]] = {}
_MEMO_ENTRIES = 1024
_MEMO_TARGET_MAX = 256


def normalize_path(target: bytes) -> tuple[str, bytes, bytes]:
    """Split and normalize a raw request-target.

    Returns ``(route_path, forward_path, query)``: the decoded, dot-resolved path used
    for routing; that path re-encoded for the upstream; the raw query (without "?",
    b"" when there is none). Accepts origin-form (``/a?b``) and absolute-form
    (``http://host/a?b``). Raises :class:`~relay.errors.BadRequest` for anything
    ambiguous, and :class:`AsteriskForm` for ``*``.
    """
    result = _MEMO.get(target)
    if result is not None:
        return result
    m = _PLAIN.fullmatch(target)
    if m is not None:
        path, query = m.group(1, 2)
        result = (path.decode("ascii"), path, query or b"")
    else:
        result = _normalize(target)
    if len(target) <= _MEMO_TARGET_MAX:
        if len(_MEMO) >= _MEMO_ENTRIES:
            _MEMO.clear()
        _MEMO[target] = result
    return result


def target_authority(target: bytes) -> bytes:
    """The authority of an absolute-form target (``http://h:1/p`` → ``h:1``), unchecked."""
    return _split_absolute(target)[0]


def without_params(route_path: str) -> str:
    """``route_path`` with every segment's ``;`` parameters cut off, as Tomcat, Jetty
    and Spring read it (``/a;v=1/b;x`` → ``/a/b``)."""
    return "/".join(segment.partition(";")[0] for segment in route_path.split("/"))


def _normalize(target: bytes) -> tuple[str, bytes, bytes]:
    if target[:1] != b"/":
        target = _split_absolute(target)[1]
    path, _, query = target.partition(b"?")
    if _QUERY_BAD.search(query):
        raise BadRequest("invalid character in the query")
    route, forward = _normalize_path(path)
    return route, forward, query


def _split_absolute(target: bytes) -> tuple[bytes, bytes]:
    """An absolute-form target's authority and origin-form part (``http://h/p?q`` →
    ``h``, ``/p?q``)."""
    if target == b"*":
        raise AsteriskForm("asterisk-form request-target")
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadRequest("request-target must start with '/'")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority = rest[:cut]
    if b"#" in authority or b"@" in authority:
        raise BadRequest("invalid authority in the request-target")
    return authority, rest[cut:] if rest[cut:cut + 1] == b"/" else b"/" + rest[cut:]


def _normalize_path(path: bytes) -> tuple[str, bytes]:
    bad = _RAW_BAD.search(path)
    if bad is not None or b"#" in path:
        raise BadRequest(f"invalid character {bad.group() if bad else b'#'!r} in the path")
    if b"%" in path:
        if _ESCAPE_BAD.search(path):
            raise BadRequest("malformed percent-escape in the path")
        if _ESCAPE_FORBIDDEN.search(path):
            raise BadRequest("encoded '/', '\\', '#' or control character in the path")
        if _DOUBLE_ESCAPE.search(path):
            raise BadRequest("double-encoded separator or dot in the path")
    kept = _remove_dot_segments([_segment(raw) for raw in path.split(b"/")[1:]])
    return "/" + "/".join(route for route, _ in kept), b"/" + b"/".join(forward for _, forward in kept)


def _segment(raw: bytes) -> tuple[str, bytes]:
    """One raw segment, decoded (for routing) and re-encoded (to forward), an encoded
    ";" staying encoded in the latter."""
    try:
        pieces = [unquote_to_bytes(piece).decode("utf-8") for piece in _ENCODED_SEMICOLON.split(raw)]
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8") from None
    decoded = ";".join(pieces)
    name, params, _ = decoded.partition(";")
    if params and name in _DOT_NAMES:
        raise BadRequest("a path parameter on an empty or dot-segment")
    if not decoded.isascii():
        folded = unicodedata.normalize("NFKC", decoded)
        if folded != decoded and any(folded.count(c) != decoded.count(c) for c in _SPECIAL):
            raise BadRequest("a character in the path reads as a separator or dot once normalized")
    return decoded, "%3B".join(quote(piece, safe=_KEEP) for piece in pieces).encode("ascii")


def _remove_dot_segments(segments: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Resolve "." and ".." (RFC 3986 §5.2.4), refusing to climb above the root."""
    if any(route == "" for route, _ in segments[:-1]):
        raise BadRequest("empty segment ('//') in the path")
    out: list[tuple[str, bytes]] = []
    for segment in segments:
        if segment[0] == "..":
            if not out:
                raise BadRequest("'..' climbs above the root")
            out.pop()
        elif segment[0] != ".":
            out.append(segment)
    if segments[-1][0] in (".", ".."):
        out.append(("", b""))  # "/a/b/.." names the directory "/a/"
    return out
