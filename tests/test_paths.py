"""Request-target normalization: one path to route on, the same path forwarded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import paths
from relay.errors import BadRequest
from relay.paths import AsteriskForm, normalize_path

ACCEPTED = [
    # (target, route_path, forward_path, query)
    (b"/", "/", b"/", b""),
    (b"/orders/42", "/orders/42", b"/orders/42", b""),
    (b"/orders/", "/orders/", b"/orders/", b""),
    (b"/a/b?x=1&y=2", "/a/b", b"/a/b", b"x=1&y=2"),
    (b"/a?", "/a", b"/a", b""),
    (b"/a?b=%2F", "/a", b"/a", b"b=%2F"),  # the query is never decoded
    (b"/a?b=/../c", "/a", b"/a", b"b=/../c"),
    (b"/file.tar.gz", "/file.tar.gz", b"/file.tar.gz", b""),
    (b"/.well-known/x", "/.well-known/x", b"/.well-known/x", b""),
    (b"/...", "/...", b"/...", b""),
    (b"/a/./b/../c", "/a/c", b"/a/c", b""),
    (b"/a/%2e%2e/b", "/b", b"/b", b""),
    (b"/a/%2E%2E/b", "/b", b"/b", b""),
    (b"/a/.%2e/b", "/b", b"/b", b""),
    (b"/a/b/..", "/a/", b"/a/", b""),
    (b"/a/b/.", "/a/b/", b"/a/b/", b""),
    (b"/a/..", "/", b"/", b""),
    (b"/caf%C3%A9", "/caf\u00e9", b"/caf%C3%A9", b""),
    (b"/caf%c3%a9", "/caf\u00e9", b"/caf%C3%A9", b""),  # escapes come out uppercase
    (b"/a%20b", "/a b", b"/a%20b", b""),
    (b"/a%25b", "/a%b", b"/a%25b", b""),  # decoded once: "%25" is a literal "%"
    (b"/a%252Fb", "/a%2Fb", b"/a%252Fb", b""),
    (b"/a%3Fb", "/a?b", b"/a%3Fb", b""),
    (b"/%7Euser", "/~user", b"/~user", b""),  # unreserved characters need no escape
    (b"/a%3Ab@c", "/a:b@c", b"/a:b@c", b""),
    (b"/a\"b", '/a"b', b"/a%22b", b""),  # harmless but not pchar: forwarded escaped
    (b"http://example.test/p?q=1", "/p", b"/p", b"q=1"),
    (b"HTTP://example.test", "/", b"/", b""),
    (b"https://example.test:8443?q", "/", b"/", b"q"),
    (b"http://example.test/a/../b", "/b", b"/b", b""),
]

REFUSED = [
    b"",
    b"a/b",
    b"?x",
    b"/%2e%2e/etc",
    b"/..",
    b"/a/../..",
    b"/a/%2e%2e/%2e%2e/x",
    b"/a%2fb",
    b"/a%2Fb",
    b"/a%5cb",
    b"/a%5Cb",
    b"/a\\b",
    b"//x",
    b"/a//b",
    b"/a/.//b",
    b"/a//../b",
    b"/%00",
    b"/a%0d%0aX-Injected:%20yes",
    b"/a%7f",
    b"/a\x00b",
    b"/a\tb",
    b"/a b",
    b"/a\x7f",
    b"/a#frag",
    b"/a%23b",
    b"/a?b#frag",
    b"/a?b c",
    b"/a?b\r\n",
    b"/%G1",
    b"/%4",
    b"/a%",
    b"/%C0%AF",  # overlong "/"
    b"/%C0%AE%C0%AE/x",  # overlong ".."
    b"/%ED%A0%80",  # a UTF-16 surrogate
    b"/%FF",
    b"/caf\xc3\xa9",  # raw non-ASCII: clients must escape it
    b"ftp://example.test/x",
    b"http://user@example.test/x",
    b"example.test:443",
]


@pytest.mark.parametrize(("target", "route", "forward", "query"), ACCEPTED)
def test_accepted_targets(target: bytes, route: str, forward: bytes, query: bytes) -> None:
    assert normalize_path(target) == (route, forward, query)
    assert normalize_path(target) == (route, forward, query)  # the memoized answer is the same


@pytest.mark.parametrize("target", REFUSED)
def test_refused_targets(target: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(target)
    with pytest.raises(BadRequest):  # refusals are never memoized into acceptance
        normalize_path(target)


def test_asterisk_form_has_its_own_type() -> None:
    with pytest.raises(AsteriskForm) as caught:
        normalize_path(b"*")
    assert isinstance(caught.value, BadRequest) and caught.value.status == 400


def test_the_memo_stays_bounded() -> None:
    for n in range(3 * paths._MEMO_ENTRIES):
        assert normalize_path(b"/items/%d" % n)[0] == f"/items/{n}"
    assert 0 < len(paths._MEMO) <= paths._MEMO_ENTRIES
    long_target = b"/" + b"x" * (paths._MEMO_TARGET_MAX + 1)
    normalize_path(long_target)
    assert long_target not in paths._MEMO


# Segments drawn from characters that matter: dots, escapes of dots and of
# multi-byte UTF-8, sub-delims and plain letters.
_SEGMENT = st.lists(
    st.sampled_from(["a", "b", ".", "..", "%2e", "%2E", "%C3%A9", "%20", "%25", "~", "!", "@", ":", "-"]),
    min_size=1,
    max_size=4,
).map("".join)
_TARGET = st.lists(_SEGMENT, min_size=1, max_size=6).map(lambda s: ("/" + "/".join(s)).encode())


@given(_TARGET, st.booleans())
def test_forwarding_is_stable(target: bytes, trailing_slash: bool) -> None:
    """The forwarded path normalizes to itself and routes the same: upstream sees what we routed."""
    if trailing_slash:
        target += b"/"
    try:
        route, forward, _ = normalize_path(target)
    except BadRequest:
        return
    assert normalize_path(forward) == (route, forward, b"")
    segments = route.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "" not in segments[:-1]


@given(st.binary(max_size=40))
def test_arbitrary_bytes_either_normalize_or_raise_bad_request(tail: bytes) -> None:
    try:
        route, forward, query = normalize_path(b"/" + tail)
    except BadRequest:
        return
    assert route.startswith("/") and forward.startswith(b"/")
    assert "\\" not in route and "\x00" not in route
    assert all(0x21 <= c <= 0x7E for c in forward)
    assert b"#" not in query
