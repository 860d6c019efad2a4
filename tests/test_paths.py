"""Request-target normalization: one path to route on, the same path forwarded."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

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
    (b"/a%2541", "/a%41", b"/a%2541", b""),  # a second decoding would give a harmless "A"
    (b"/a%3Fb", "/a?b", b"/a%3Fb", b""),
    (b"/%7Euser", "/~user", b"/~user", b""),  # unreserved characters need no escape
    (b"/a%3Ab@c", "/a:b@c", b"/a:b@c", b""),
    (b"/a\"b", '/a"b', b"/a%22b", b""),  # harmless but not pchar: forwarded escaped
    # path parameters: kept as they came, an encoded ";" staying encoded
    (b"/a;v=1/b", "/a;v=1/b", b"/a;v=1/b", b""),
    (b"/a;/b", "/a;/b", b"/a;/b", b""),
    (b"/a%3Bv=1/b", "/a;v=1/b", b"/a%3Bv=1/b", b""),
    (b"/a%3bb;c", "/a;b;c", b"/a%3Bb;c", b""),
    (b"/a/...;x", "/a/...;x", b"/a/...;x", b""),
    (b"/a/..x;y", "/a/..x;y", b"/a/..x;y", b""),
    (b"/a;x/../b", "/b", b"/b", b""),
    (b"/a/%2e%2ex;y", "/a/..x;y", b"/a/..x;y", b""),
    (b"/caf%C3%A9%3B1", "/caf\u00e9;1", b"/caf%C3%A9%3B1", b""),
    (b"/%EF%AC%81le", "/\ufb01le", b"/%EF%AC%81le", b""),  # NFKC "file": nothing special appears
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
    # dot-segments and empty ones once a ";" parameter is cut off (Tomcat, Jetty, Spring)
    b"/public/..;/private/x",
    b"/a/..;x/b",
    b"/a/..;",
    b"/a/.;/b",
    b"/a/.;x",
    b"/a/%2e%2e;/b",
    b"/a/%2E%2e;jsessionid=1/b",
    b"/a/.%2E;/b",
    b"/a/..%3b/b",
    b"/a/..%3B/b",
    b"/a/%2e%2e%3Bx/b",
    b"/a/;x/b",
    b"/a/;",
    b"/a/%3b/b",
    b"/;x",
    # escapes of escapes of what a second decoding would turn into a separator or a dot
    b"/a/%252e%252e/b",
    b"/a/%252E./b",
    b"/a%252Fb",
    b"/a%252fb",
    b"/a%255Cb",
    b"/a%253Bb",
    b"/a%253fb",
    b"/a%2523b",
    b"/a%2500b",
    b"/a%2525b",
    # compatibility forms of ".", "/", "\\", ";" (NFKC)
    b"/%EF%BC%8E%EF%BC%8E/x",  # full-width ".."
    b"/a/%E2%80%A4%E2%80%A4/b",  # one dot leader
    b"/a%EF%BC%8Fb",  # full-width "/"
    b"/a%EF%BC%BCb",  # full-width "\\"
    b"/a%EF%B9%A8b",  # small reverse solidus
    b"/a/..%EF%BC%9Bx/b",  # full-width ";"
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


def test_without_params_cuts_each_segments_parameters() -> None:
    assert paths.without_params("/a;v=1/b;x;y/c") == "/a/b/c"
    assert paths.without_params("/a/b/") == "/a/b/"
    assert paths.without_params("/") == "/"


@pytest.mark.parametrize(("target", "authority"), [
    (b"http://a.test/x", b"a.test"),
    (b"HTTPS://a.test:8443?q", b"a.test:8443"),
    (b"http://[::1]:80/x", b"[::1]:80"),
    (b"http:///x", b""),
])
def test_target_authority(target: bytes, authority: bytes) -> None:
    assert paths.target_authority(target) == authority


# Segments mixing the spellings of ".", ";" and parameters: what Tomcat, Jetty and
# Spring read as a dot-segment once they cut a segment's ";" parameter off.
_PARAM_PIECE = st.sampled_from(
    [".", "..", "%2e", "%2E", ";", "%3b", "%3B", "a", "x=1", "jsessionid=9", "%25", "%252e", "%C3%A9"])
_PARAM_SEGMENT = st.lists(_PARAM_PIECE, min_size=1, max_size=5).map("".join)
_PARAM_TARGET = st.lists(_PARAM_SEGMENT, min_size=1, max_size=5).map(lambda s: ("/" + "/".join(s)).encode())


def _decoded_name(segment: bytes) -> tuple[str, bool]:
    """A raw segment's decoded name before any ";" and whether it had a parameter."""
    decoded = unquote_to_bytes(segment).decode("utf-8", "replace")
    name, sep, _ = decoded.partition(";")
    return name, bool(sep)


@given(_PARAM_TARGET)
def test_no_dot_segment_hides_behind_a_parameter(target: bytes) -> None:
    """A dot or empty segment with a parameter, however spelled, is refused; what is
    accepted reads the same to relay, to an upstream that cuts parameters off at raw
    ";" before decoding (Tomcat) and to one that decodes once more: no dot-segment
    appears, and a ";" that came encoded is forwarded encoded."""
    raw_segments = target.split(b"/")[1:]
    hidden = any(has_param and name in ("", ".", "..") for name, has_param in map(_decoded_name, raw_segments))
    try:
        route, forward, _ = normalize_path(target)
    except BadRequest:
        return
    assert not hidden, f"{target!r} was accepted as {forward!r}"
    assert normalize_path(forward) == (route, forward, b"")
    assert forward.count(b";") <= target.count(b";")
    assert forward.upper().count(b"%3B") <= target.upper().count(b"%3B")
    forward_segments = forward.split(b"/")[1:]
    for segment in forward_segments[:-1] + [forward_segments[-1] or b"x"]:
        tomcat = unquote_to_bytes(segment.partition(b";")[0]).decode()
        twice = unquote_to_bytes(unquote_to_bytes(segment)).decode("utf-8", "replace").partition(";")[0]
        assert tomcat not in ("", ".", "..") and twice not in ("", ".", ".."), (target, forward)
    assert paths.without_params(route).split("/")[1:-1].count("") == 0
