"""Host values: a Host header field, or the authority of an absolute-form target.

relay forwards the Host it accepted, so a value an upstream or a cache could split or
read two ways must not pass: only ``host [ ":" port ]`` of RFC 3986 §3.2.2 is taken,
with port digits up to 65535. The host is a DNS-style reg-name (letters, digits,
``-``, ``.``, ``_``, ``~``), an IPv4 address (which that covers) or a bracketed IPv6
address. RFC 3986 would also let a reg-name carry sub-delims (``,`` ``;`` ``=`` ...)
and escapes; no DNS name does, and ``a.test,b.test`` is read as a list by some, so
they are refused, as are userinfo (``user@``), paths, spaces, IPvFuture and IPv6
zone ids. An empty value is refused too: RFC 9112 §3.2 sends one only for a target
URI without an authority, and an ``http`` URI always has one (RFC 9110 §4.2.1).

Valid values repeat (one or a few names per deployment), so they are remembered in
a small bounded set: the check on a known value is a set lookup.
"""

from __future__ import annotations

import ipaddress
import re

from relay.errors import BadRequest

__all__ = ["check_host"]

_REG_NAME = re.compile(rb"[A-Za-z0-9\-._~]+(?::([0-9]{1,5}))?")
_IP_LITERAL = re.compile(rb"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?")

_KNOWN: set[bytes] = set()
_KNOWN_ENTRIES = 256
_KNOWN_VALUE_MAX = 255


def check_host(value: bytes) -> None:
    """Raise :class:`~relay.errors.BadRequest` unless ``value`` is ``host [ ":" port ]``."""
    if value in _KNOWN:
        return
    m = _REG_NAME.fullmatch(value)
    port = m.group(1) if m is not None else None
    if m is None:
        m = _IP_LITERAL.fullmatch(value)
        if m is None:
            raise BadRequest("invalid Host")
        try:
            ipaddress.IPv6Address(m.group(1).decode("ascii"))
        except ValueError:
            raise BadRequest("invalid IPv6 address in Host") from None
        port = m.group(2)
    if port is not None and int(port) > 65535:
        raise BadRequest("invalid port in Host")
    if len(value) <= _KNOWN_VALUE_MAX:
        if len(_KNOWN) >= _KNOWN_ENTRIES:
            _KNOWN.clear()
        _KNOWN.add(value)
