"""Request-target normalization: the one path relay routes on and the one it forwards.

Routing and forwarding must see the same path, or a request could be authorized for
one flow and reach the upstream as another (``/public/%2e%2e/admin``). So relay
decodes percent-escapes exactly once, resolves dot-segments, and forwards the result
re-encoded: the upstream never has to interpret an escape or a ``..`` itself.
Anything that could be read two ways is refused instead: an encoded ``/``, ``\\``
or ``#``, NUL and other control characters, a raw ``#``, empty segments, ``..``
above the root, malformed escapes and invalid UTF-8.

Most request paths are plain (``/orders/42``): they pass one regular expression and
are returned as they are. Repeated targets are answered from a small memo.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from relay.errors import BadRequest

__all__ = ["AsteriskForm", "normalize_path"]


class AsteriskForm(BadRequest):
    """The request-target was ``*`` (``OPTIONS * HTTP/1.1``).

    A BadRequest unless the caller catches it to answer server-wide OPTIONS itself.
    """


# An origin-form target whose path is pchar-only segments, none starting with "."
# (so no "." or ".." segment), with no "%" and no empty segment but a trailing "/";
# group 1 is the path, group 2 the query.
_PLAIN = re.compile(
    rb"((?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-_~!$&'()*+,;=:@.]*)+/?|/)"
    rb"(?:\?([\x21\x22\x24-\x7e\x80-\xff]*))?"
)
# raw bytes never allowed in a path: CTLs, space, DEL, backslash, non-ASCII
_RAW_BAD = re.compile(rb"[\x00-\x20\x7f\\\x80-\xff]")
_QUERY_BAD = re.compile(rb"[\x00-\x20\x7f#]")
_ESCAPE_BAD = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# escapes that decode to "/", "\", "#" or a control character
_ESCAPE_FORBIDDEN = re.compile(rb"%(?:2[Ff]|5[Cc]|23|[01][0-9A-Fa-f]|7[Ff])")
# RFC 3986 pchar minus unreserved (quote never escapes those) plus "/"
_KEEP = "/!$&'()*+,;=:@"

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


def _normalize(target: bytes) -> tuple[str, bytes, bytes]:
    if target[:1] != b"/":
        target = _origin_form(target)
    path, _, query = target.partition(b"?")
    if _QUERY_BAD.search(query):
        raise BadRequest("invalid character in the query")
    route, forward = _normalize_path(path)
    return route, forward, query


def _origin_form(target: bytes) -> bytes:
    """The origin-form part of an absolute-form target (``http://h/p?q`` → ``/p?q``)."""
    if target == b"*":
        raise AsteriskForm("asterisk-form request-target")
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadRequest("request-target must start with '/'")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    if b"#" in rest[:cut] or b"@" in rest[:cut]:
        raise BadRequest("invalid authority in the request-target")
    return b"/" + rest[cut:] if rest[cut:cut + 1] != b"/" else rest[cut:]


def _normalize_path(path: bytes) -> tuple[str, bytes]:
    bad = _RAW_BAD.search(path)
    if bad is not None or b"#" in path:
        raise BadRequest(f"invalid character {bad.group() if bad else b'#'!r} in the path")
    if b"%" in path:
        if _ESCAPE_BAD.search(path):
            raise BadRequest("malformed percent-escape in the path")
        if _ESCAPE_FORBIDDEN.search(path):
            raise BadRequest("encoded '/', '\\', '#' or control character in the path")
        try:
            decoded = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path is not valid UTF-8") from None
    else:
        decoded = path.decode("ascii")
    route = _remove_dot_segments(decoded)
    return route, quote(route, safe=_KEEP).encode("ascii")


def _remove_dot_segments(path: str) -> str:
    """Resolve "." and ".." (RFC 3986 §5.2.4), refusing to climb above the root."""
    segments = path.split("/")[1:]
    if "" in segments[:-1]:
        raise BadRequest("empty segment ('//') in the path")
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if not out:
                raise BadRequest("'..' climbs above the root")
            out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." names the directory "/a/"
    return "/" + "/".join(out)
