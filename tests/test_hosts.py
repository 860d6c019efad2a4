"""Host values: only RFC 3986 host[:port], a DNS-style name, IPv4 or bracketed IPv6."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import hosts
from relay.errors import BadRequest
from relay.hosts import check_host

ACCEPTED = [
    b"a.test", b"A.Test", b"relay.test:8080", b"a.test:0", b"a.test:65535", b"localhost",
    b"xn--bcher-kva.test", b"under_score.test", b"a~b", b"192.0.2.1", b"192.0.2.1:443",
    b"[::1]", b"[::1]:8080", b"[2001:db8::7]", b"[::ffff:192.0.2.1]:80",
]

REFUSED = [
    b"", b" ", b"a.test, b.test", b"a.test,b.test", b"a.test b.test", b"a.test ", b" a.test",
    b"user@evil.test", b"user:pw@evil.test", b"evil.test/x", b"evil.test\\x", b"evil.test?x",
    b"evil.test#x", b"a.test;x", b"a%2etest", b"a.test:", b"a.test:65536", b"a.test:99999",
    b"a.test:123456", b"a.test:8o", b"a.test:-1", b"a.test:+80", b"a.test:80:80", b":80",
    b"::1", b"[::1", b"::1]", b"[::g]", b"[fe80::1%25eth0]", b"[fe80::1%eth0]", b"[v1.x]",
    b"[]", b"[::1]x", b"[::1]:", b"[::1]:65536", b"[1.2.3.4]", b"a.test\x00", b"a.test\t",
    b"caf\xc3\xa9.test", b"\xff",
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted(value: bytes) -> None:
    check_host(value)
    check_host(value)  # the remembered answer is the same


@pytest.mark.parametrize("value", REFUSED)
def test_refused(value: bytes) -> None:
    for _ in range(2):  # a refusal is never remembered as an acceptance
        with pytest.raises(BadRequest):
            check_host(value)


def test_remembered_values_stay_bounded() -> None:
    for n in range(3 * hosts._KNOWN_ENTRIES):
        check_host(b"h%d.test" % n)
    assert 0 < len(hosts._KNOWN) <= hosts._KNOWN_ENTRIES
    long_name = b"a" * (hosts._KNOWN_VALUE_MAX + 1)
    check_host(long_name)
    assert long_name not in hosts._KNOWN


_REFERENCE_NAME = re.compile(rb"[A-Za-z0-9._~-]+")


def _reference(value: bytes) -> bool:
    """The rule spelled out a second way: split off the port by hand."""
    host, port = value, b""
    if value.startswith(b"["):
        inner, sep, rest = value[1:].partition(b"]")
        if not sep or (rest and not rest.startswith(b":")):
            return False
        port = rest[1:] if rest else b""
        if rest == b":":
            return False
        try:
            ipaddress.IPv6Address(inner.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        if b"%" in inner:
            return False
    else:
        host, sep, port = value.partition(b":")
        if sep and not port:
            return False
        if not _REFERENCE_NAME.fullmatch(host):
            return False
    return not port or (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535)


_ALPHABET = st.sampled_from([b"a", b"Z", b"0", b"9", b".", b"-", b"_", b"~", b":", b"[", b"]", b"@", b",",
                             b" ", b"/", b";", b"%", b"f", b"::", b"65535", b"65536", b"\t", b"\xc3\xa9"])


@given(st.lists(_ALPHABET, max_size=12).map(b"".join))
def test_agrees_with_the_reference(value: bytes) -> None:
    try:
        check_host(value)
    except BadRequest:
        assert not _reference(value), value
    else:
        assert _reference(value), value
