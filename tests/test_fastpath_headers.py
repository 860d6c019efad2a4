"""scan_headers: every rule, on both implementations, plus a differential property test and
real requests fed to httptools at every split point.

What httptools 0.9 delivers (checked by the tests at the bottom): it buffers name and value
fragments itself and calls ``on_header`` once per complete header, even when fed one byte at
a time, so collecting needs no joining; it strips leading whitespace from values but keeps
trailing whitespace, which scan_headers therefore trims; an empty value arrives as b"";
chunked trailers arrive through ``on_header`` after ``on_headers_complete``, so collection
stops there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import _fastpath_py
from support.impls import COMPILED, NOT_BUILT
from relay.errors import BadRequest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("host", "authorization", "content_length", "chunked", "close", "keep_alive", "upgrade",
          "expect", "idempotency_key", "forwarded_for", "forward")  # fmt: skip
NO_DROP: frozenset[bytes] = frozenset()
Headers = Iterable[Any]  # pairs of bytes-like, or anything scan_headers should refuse


def fields(scan: Any) -> dict[str, Any]:
    return {name: getattr(scan, name) for name in FIELDS}


def rules(impl: ModuleType, drop: Iterable[bytes] = NO_DROP, prefixes: Iterable[bytes] = (),
          underscores: bool = False) -> Any:
    return impl.HeaderRules(drop, prefixes, underscores=underscores)


def scan(impl: ModuleType, headers: Headers, drop: Iterable[bytes] = NO_DROP, prefixes: Iterable[bytes] = (),
         underscores: bool = False) -> Any:
    return impl.scan_headers(headers, rules(impl, drop, prefixes, underscores))


def rejected(impl: ModuleType, headers: Headers, drop: frozenset[bytes] = NO_DROP) -> str:
    """The reason scan_headers gives for refusing headers."""
    with pytest.raises(BadRequest) as info:
        scan(impl, headers, drop)
    return info.value.detail


def forward(impl: ModuleType, headers: Headers, drop: Iterable[bytes] = NO_DROP, prefixes: Iterable[bytes] = (),
            underscores: bool = False) -> bytes:
    result: bytes = scan(impl, headers, drop, prefixes, underscores).forward
    return result


def random_case(name: bytes, flips: int) -> bytes:
    """name with the letters picked by the bits of flips upper-cased."""
    return bytes(c - 32 if 97 <= c <= 122 and flips >> i & 1 else c for i, c in enumerate(name))


# ---------------------------------------------------------------------------------------
# The whole result
# ---------------------------------------------------------------------------------------

TOKEN = b"eyJ" + b"A" * 790 + b".sig"


def test_typical_proxied_request(impl: ModuleType) -> None:
    headers = [
        (b"Host", b"relay.example"),
        (b"User-Agent", b"curl/8.0"),
        (b"Accept", b"*/*"),
        (b"Authorization", b"Bearer " + TOKEN),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"42"),
        (b"Idempotency-Key", b"k-1"),
        (b"X-Forwarded-For", b"10.0.0.1, 192.0.2.7"),
        (b"X-Relay-Subject", b"admin"),
        (b"Connection", b"close"),
        (b"Expect", b"100-Continue"),
        (b"Cookie", b"a=b"),
    ]
    assert fields(scan(impl, headers, frozenset({b"cookie"}))) == {
        "host": b"relay.example",
        "authorization": b"Bearer " + TOKEN,
        "content_length": 42,
        "chunked": False,
        "close": True,
        "keep_alive": False,
        "upgrade": False,
        "expect": b"100-continue",
        "idempotency_key": b"k-1",
        "forwarded_for": b"192.0.2.7",
        "forward": b"User-Agent: curl/8.0\r\nAccept: */*\r\nAuthorization: Bearer " + TOKEN
        + b"\r\nContent-Type: application/json\r\nIdempotency-Key: k-1\r\n",
    }


def test_no_headers(impl: ModuleType) -> None:
    assert fields(scan(impl, [])) == {
        "host": None, "authorization": None, "content_length": -1, "chunked": False,
        "close": False, "keep_alive": False, "upgrade": False, "expect": None,
        "idempotency_key": None, "forwarded_for": None, "forward": b"",
    }  # fmt: skip


def test_attributes_are_read_only(impl: ModuleType) -> None:
    result = scan(impl, [(b"Host", b"a")])
    for name in FIELDS:
        with pytest.raises(AttributeError):
            setattr(result, name, None)
    assert result.host == b"a"


def test_same_public_api() -> None:
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    assert COMPILED.__all__ == _fastpath_py.__all__


# ---------------------------------------------------------------------------------------
# Names and values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [b"", b"X Foo", b"X-Foo:", b"X\x00", b"X(Y)", b"X\tA", b"caf\xc3\xa9", b"X\x7f", b"[]"]
)
def test_name_must_be_a_token(impl: ModuleType, name: bytes) -> None:
    assert rejected(impl, [(b"Host", b"a"), (name, b"v")]) == "bad header name"


def test_every_tchar_is_a_name(impl: ModuleType) -> None:
    name = b"!#$%&'*+-.^`|~0123456789azAZ"
    assert forward(impl, [(name, b"v")]) == name + b": v\r\n"
    assert forward(impl, [(name + b"_", b"v")], underscores=True) == name + b"_: v\r\n"


@pytest.mark.parametrize("byte", [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
def test_control_bytes_refused_in_values(impl: ModuleType, byte: int) -> None:
    value = b"a" + bytes([byte]) + b"b"
    assert rejected(impl, [(b"X-A", value)]) == "bad header value"
    assert rejected(impl, [(b"Authorization", b"Bearer " + value)]) == "bad header value"


def test_obs_text_tab_and_printables_allowed_in_values(impl: ModuleType) -> None:
    value = b"a\tb " + bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)) + b"z"
    assert forward(impl, [(b"X-A", value)]) == b"X-A: " + value + b"\r\n"


def test_values_lose_surrounding_whitespace(impl: ModuleType) -> None:
    result = scan(impl, [(b"Host", b" a \t"), (b"Content-Length", b"5 "), (b"X-A", b"\t x y  ")])
    assert (result.host, result.content_length) == (b"a", 5)
    assert result.forward == b"X-A: x y\r\n"


def test_empty_value_is_forwarded(impl: ModuleType) -> None:
    assert forward(impl, [(b"X-Empty", b""), (b"X-Blank", b"  ")]) == b"X-Empty: \r\nX-Blank: \r\n"


# ---------------------------------------------------------------------------------------
# Single-valued headers
# ---------------------------------------------------------------------------------------

SINGLE = [
    (b"host", "host", "duplicate Host"),
    (b"authorization", "authorization", "duplicate Authorization"),
    (b"idempotency-key", "idempotency_key", "duplicate Idempotency-Key"),
]


@pytest.mark.parametrize(("name", "attribute", "reason"), SINGLE)
def test_single_header_is_read_in_any_case(
    impl: ModuleType, name: bytes, attribute: str, reason: str
) -> None:
    for flips in (0, 1, 0b10101, -1):
        assert getattr(scan(impl, [(random_case(name, flips), b"Va lue")]), attribute) == b"Va lue"


@pytest.mark.parametrize(("name", "attribute", "reason"), SINGLE)
def test_second_single_header_is_refused(
    impl: ModuleType, name: bytes, attribute: str, reason: str
) -> None:
    assert rejected(impl, [(name, b"a"), (b"X-B", b"b"), (name.upper(), b"a")]) == reason


# ---------------------------------------------------------------------------------------
# Framing: Content-Length and Transfer-Encoding
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "length"), [(b"0", 0), (b"5", 5), (b"007", 7), (b"9" * 18, 10**18 - 1)]
)
def test_content_length(impl: ModuleType, value: bytes, length: int) -> None:
    assert scan(impl, [(b"Content-Length", value)]).content_length == length


@pytest.mark.parametrize(
    "value",
    [b"", b"  ", b"-1", b"+1", b"1 2", b"5, 5", b"5,5", b"0x10", b"1" * 19, b"1e3", b"\xd9\xa1", b"\xb2"],
)
def test_malformed_content_length(impl: ModuleType, value: bytes) -> None:
    assert rejected(impl, [(b"content-length", value)]) == "bad Content-Length"


def test_duplicate_content_length_even_equal(impl: ModuleType) -> None:
    headers = [(b"Content-Length", b"5"), (b"CONTENT-LENGTH", b"5")]
    assert rejected(impl, headers) == "duplicate Content-Length"


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b" chunked\t"])
def test_chunked(impl: ModuleType, value: bytes) -> None:
    result = scan(impl, [(b"Transfer-Encoding", value)])
    assert (result.chunked, result.content_length, result.forward) == (True, -1, b"")


@pytest.mark.parametrize(
    "value", [b"gzip, chunked", b"identity", b"chunked, chunked", b"", b"chunked;x=1", b"chunk", b"gzip"]
)
def test_other_transfer_encodings_refused(impl: ModuleType, value: bytes) -> None:
    assert rejected(impl, [(b"transfer-encoding", value)]) == "unsupported Transfer-Encoding"


def test_duplicate_transfer_encoding(impl: ModuleType) -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"transfer-encoding", b"chunked")]
    assert rejected(impl, headers) == "duplicate Transfer-Encoding"


@pytest.mark.parametrize("te_first", [True, False])
def test_content_length_with_transfer_encoding(impl: ModuleType, te_first: bool) -> None:
    headers = [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")]
    if te_first:
        headers.reverse()
    assert rejected(impl, headers) == "Content-Length with Transfer-Encoding"


# ---------------------------------------------------------------------------------------
# Connection, Upgrade, Expect
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "close", "keep_alive", "upgrade"),
    [
        ([b"close"], True, False, False),
        ([b"Keep-Alive"], False, True, False),
        ([b"UPGRADE"], False, False, True),
        ([b"keep-alive ,\tUpgrade"], False, True, True),
        ([b"keep-alive", b"close"], True, True, False),
        ([b",, close ,"], True, False, False),
        ([b"", b"x-other"], False, False, False),
        ([b"closed", b"keep-alive-ish"], False, False, False),
    ],
)
def test_connection_options(
    impl: ModuleType, values: list[bytes], close: bool, keep_alive: bool, upgrade: bool
) -> None:
    result = scan(impl, [(b"Connection", value) for value in values])
    assert (result.close, result.keep_alive, result.upgrade) == (close, keep_alive, upgrade)
    assert result.forward == b""


@pytest.mark.parametrize("value", [b"close; x", b"close x", b"\"close\"", b"close,\xff", b"a/b"])
def test_connection_option_must_be_a_token(impl: ModuleType, value: bytes) -> None:
    assert rejected(impl, [(b"Connection", value)]) == "bad Connection"


def test_headers_named_by_connection_are_not_forwarded(impl: ModuleType) -> None:
    headers = [
        (b"X-Before", b"1"),
        (b"Connection", b"close, x-before"),
        (b"X-Keep", b"2"),
        (b"x-after", b"3"),
        (b"connection", b" X-AFTER ,, Authorization,idempotency-KEY"),
        (b"Authorization", b"Bearer t"),
        (b"X-Afterwards", b"4"),
        (b"Idempotency-Key", b"k"),
    ]
    result = scan(impl, headers)
    assert result.forward == b"X-Keep: 2\r\nX-Afterwards: 4\r\n"
    # still read, only not forwarded
    assert (result.authorization, result.idempotency_key) == (b"Bearer t", b"k")


def test_upgrade_header(impl: ModuleType) -> None:
    result = scan(impl, [(b"Upgrade", b"websocket"), (b"X-A", b"1")])
    assert (result.upgrade, result.forward) == (True, b"X-A: 1\r\n")
    assert scan(impl, [(b"uPgRaDe", b"")]).upgrade is True


def test_expect(impl: ModuleType) -> None:
    assert scan(impl, [(b"Expect", b"100-Continue")]).expect == b"100-continue"
    assert scan(impl, [(b"expect", b"Foo"), (b"EXPECT", b"Bar")]).expect == b"foo, bar"
    assert scan(impl, [(b"Expect", b"100-continue")]).forward == b""


# ---------------------------------------------------------------------------------------
# X-Forwarded-For
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"192.0.2.7"], b"192.0.2.7"),
        ([b"10.0.0.1, 192.0.2.7"], b"192.0.2.7"),
        ([b"10.0.0.1,192.0.2.7"], b"192.0.2.7"),
        ([b"10.0.0.1 ,\t 2001:db8::1 "], b"2001:db8::1"),
        ([b"10.0.0.1", b"203.0.113.9, 192.0.2.7"], b"192.0.2.7"),
        ([b"10.0.0.1, 192.0.2.7", b"203.0.113.9"], b"203.0.113.9"),
        ([b"10.0.0.1,"], None),  # the element the proxy appended is empty: trust nothing
        ([b"10.0.0.1", b""], None),
        ([b""], None),
        ([], None),
    ],
)
def test_rightmost_forwarded_for(
    impl: ModuleType, values: list[bytes], expected: bytes | None
) -> None:
    headers = [(b"X-Forwarded-For", value) for value in values] + [(b"X-A", b"1")]
    result = scan(impl, headers)
    assert (result.forwarded_for, result.forward) == (expected, b"X-A: 1\r\n")


# ---------------------------------------------------------------------------------------
# The forwarded block
# ---------------------------------------------------------------------------------------

NOT_FORWARDED = [
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"host", b"content-length", b"expect", b"x-forwarded-for",
]  # fmt: skip
VALID_VALUE = {b"transfer-encoding": b"chunked", b"content-length": b"1", b"connection": b"close"}


@pytest.mark.parametrize("name", NOT_FORWARDED)
@pytest.mark.parametrize("flips", [0, -1, 0b1001101])
def test_hop_by_hop_and_relay_set_headers_not_forwarded(
    impl: ModuleType, name: bytes, flips: int
) -> None:
    headers = [(b"A", b"1"), (random_case(name, flips), VALID_VALUE.get(name, b"x")), (b"B", b"2")]
    assert forward(impl, headers) == b"A: 1\r\nB: 2\r\n"


@pytest.mark.parametrize(
    "name", [b"X-Relay-Subject", b"x-relay-groups", b"X-RELAY-IDENTITY", b"x-ReLaY-", b"X-Relay-X-Y"]
)
def test_relay_namespace_never_forwarded(impl: ModuleType, name: bytes) -> None:
    assert forward(impl, [(name, b"spoofed"), (b"X-Relayed", b"ok")]) == b"X-Relayed: ok\r\n"


def test_drop_set(impl: ModuleType) -> None:
    headers = [(b"Cookie", b"c"), (b"Authorization", b"Bearer t"), (b"X-Forwarded-User", b"u"),
               (b"X-Auth-Request-Email", b"e"), (b"Accept", b"*/*")]  # fmt: skip
    assert forward(impl, headers) == (b"Cookie: c\r\nAuthorization: Bearer t\r\nX-Forwarded-User: u"
                                      b"\r\nX-Auth-Request-Email: e\r\nAccept: */*\r\n")  # fmt: skip
    drop = frozenset({b"cookie", b"authorization", b"x-forwarded-user", b"x-auth-request-email"})
    result = scan(impl, headers, drop)
    assert (result.forward, result.authorization) == (b"Accept: */*\r\n", b"Bearer t")


def test_drop_set_entries_match_whole_names_in_any_case(impl: ModuleType) -> None:
    assert forward(impl, [(b"Cookie", b"c"), (b"Cookies", b"d")], frozenset({b"COOKIE", b"cook"})) == b"Cookies: d\r\n"


def test_forward_keeps_order_case_and_repeats(impl: ModuleType) -> None:
    headers = [(b"Accept", b"a"), (b"X-MiXeD", b"B"), (b"accept", b"c"), (b"Via", b"1.1 lb")]
    assert forward(impl, headers) == b"Accept: a\r\nX-MiXeD: B\r\naccept: c\r\nVia: 1.1 lb\r\n"


def test_many_headers(impl: ModuleType) -> None:
    headers = [(b"X-H%d" % i, b"v%d" % i) for i in range(300)]
    headers += [(b"Connection", b"x-h7, X-H299"), (b"Host", b"h")]
    expected = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(300) if i not in (0, 7, 299))
    result = scan(impl, headers, frozenset({b"x-h0"}))
    assert (result.forward, result.host) == (expected, b"h")


# ---------------------------------------------------------------------------------------
# Bytes-like input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytearray, memoryview, lambda b: memoryview(b"..." + b)[3:]])
def test_bytes_like_input(impl: ModuleType, kind: Any) -> None:
    plain = [(b"Host", b"h"), (b"Authorization", b"Bearer t "), (b"X-Forwarded-For", b"a, b"),
             (b"Expect", b"X"), (b"Idempotency-Key", b"k"), (b"X-A", b"1")]  # fmt: skip
    converted = [(kind(name), kind(value)) for name, value in plain]
    result = fields(scan(impl, converted))
    assert result == fields(scan(impl, plain))
    for value in result.values():
        assert value is None or type(value) in (bytes, bool, int)


def test_tuples_of_other_iterables(impl: ModuleType) -> None:
    pairs = iter([[b"Host", b"h"], (b"X-A", b"1")])
    assert fields(scan(impl, pairs)) == fields(scan(impl, [(b"Host", b"h"), (b"X-A", b"1")]))


# ---------------------------------------------------------------------------------------
# Differential property test: random header lists, both implementations agree
# ---------------------------------------------------------------------------------------

#: the default strip list's shape: whole names and the prefix of a family
STRIPPED = [b"x-forwarded-user", b"x-auth-request-email", b"x-remote-user", b"remote-user", b"x-user"]
PREFIXES = [b"x-auth-request-", b"x-forwarded-", b"x-a", b"remote-"]
POOL = [*NOT_FORWARDED, b"authorization", b"idempotency-key", b"x-relay-subject", b"x-relay-",
        b"cookie", b"accept", b"x-foo", b"x-a", *STRIPPED, b"x-auth-request-user", b"x-forwarded-proto"]  # fmt: skip
OWS = st.sampled_from([b"", b" ", b"\t", b"  "])
FLIPS = st.integers(0, 2**20)


def respell(name: bytes, flips: int, swaps: int) -> bytes:
    """name in the case flips picks, with the `-` (and `_`) that swaps picks turned to the other."""
    turned = bytearray(random_case(name, flips))
    for i, c in enumerate(turned):
        if c in b"-_" and swaps >> i & 1:
            turned[i] = 0x5F if c == 0x2D else 0x2D
    return bytes(turned)


#: a name from the pool in any case, now and then spelled with `_` for `-`
SPELLED = st.builds(respell, st.sampled_from(POOL), FLIPS, st.sampled_from([0] * 3 + [-1, 0b10, 0b100000000])
                    | st.integers(0, 2**20))


@st.composite
def names(draw: st.DrawFn) -> bytes:
    tokens = st.text("!#$%&'*+-.^_`|~0aZ9", min_size=1, max_size=6).map(str.encode)
    # Mostly valid names, so that lists get past the first check; any binary now and then.
    source = draw(st.sampled_from([SPELLED] * 12 + [tokens] * 3 + [st.binary(max_size=8)]))
    result: bytes = draw(source)
    return result


WORDS = st.builds(random_case, st.sampled_from([*POOL, b"close", b"keep-alive", b"chunked"]), FLIPS)
ELEMENT = st.one_of(
    WORDS,
    st.sampled_from([b"0", b"17", b"007", b"9" * 18, b"1" * 19, b"-1", b"100-continue",
                     b"10.0.0.1", b"::1", b"gzip", b"", b"a b", b"\x80\xff", b"\t"]),  # fmt: skip
)
FORBIDDEN = st.one_of(st.sampled_from([b"\x7f", b"\x00", b"a\rb", b"\n", b"\x1f"]), st.binary(max_size=6))
ANY_ELEMENT = st.sampled_from([ELEMENT] * 15 + [FORBIDDEN]).flatmap(lambda s: s)
#: Values that pass a header's own rules, drawn for that header half of the time.
FITTING = {
    b"content-length": st.integers(0, 10**19).map(b"%d".__mod__),
    b"transfer-encoding": st.builds(random_case, st.just(b"chunked"), FLIPS),
    b"connection": st.lists(WORDS, min_size=1, max_size=3).map(b", ".join),
}


@st.composite
def header(draw: st.DrawFn) -> tuple[Any, Any]:
    name = draw(names())
    fitting = FITTING.get(name.lower().replace(b"_", b"-"))
    if fitting is not None and draw(st.booleans()):
        value = draw(OWS) + draw(fitting) + draw(OWS)
    else:
        elements = draw(st.lists(st.tuples(OWS, ANY_ELEMENT, OWS), max_size=4))
        value = draw(OWS) + b",".join(b"".join(e) for e in elements) + draw(OWS)
    return as_kind(name, draw(BYTES_KINDS)), as_kind(value, draw(BYTES_KINDS))


def as_kind(data: bytes, kind: str) -> Any:
    return {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data)}[kind]


BYTES_KINDS = st.sampled_from(["bytes", "bytes", "bytearray", "memoryview"])
HEADER_LISTS = st.lists(header(), max_size=12)
#: rules as configuration may spell them: any case, `_` or `-`
RULES = st.tuples(
    st.frozensets(st.builds(respell, st.sampled_from(POOL), FLIPS, FLIPS), max_size=5),
    st.lists(st.builds(respell, st.sampled_from(PREFIXES), FLIPS, FLIPS), max_size=2),
    st.booleans(),
)
RuleArgs = tuple[frozenset[bytes], list[bytes], bool]


def outcome(impl: ModuleType, headers: Headers, rule_args: RuleArgs) -> Any:
    try:
        return fields(impl.scan_headers(headers, rules(impl, *rule_args)))
    except BadRequest as exc:
        return ("BadRequest", exc.detail)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=HEADER_LISTS, rule_args=RULES)
def test_implementations_agree(headers: Headers, rule_args: RuleArgs) -> None:
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    assert outcome(COMPILED, headers, rule_args) == outcome(_fastpath_py, headers, rule_args)


# ---------------------------------------------------------------------------------------
# Strip rules: prefixes, spellings, names with `_`
# ---------------------------------------------------------------------------------------


def forwarded_names(block: bytes) -> list[bytes]:
    return [line.partition(b":")[0] for line in block.split(b"\r\n") if line]


def fold(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


def test_prefix_strips_its_family_only(impl: ModuleType) -> None:
    headers = [(b"X-Auth-Request-User", b"admin"), (b"x-auth-request-groups", b"admins"),
               (b"X-AUTH-REQUEST-", b"e"), (b"X-Auth-Request", b"kept"), (b"X-Auth-Requests", b"kept"),
               (b"X-Authorization-Request-Id", b"kept")]  # fmt: skip
    assert forwarded_names(forward(impl, headers, prefixes=[b"x-auth-request-"])) == [
        b"X-Auth-Request", b"X-Auth-Requests", b"X-Authorization-Request-Id"]


def test_prefix_never_hides_what_relay_reads(impl: ModuleType) -> None:
    headers = [(b"Authorization", b"Bearer t"), (b"Idempotency-Key", b"k"), (b"Content-Length", b"3")]
    result = scan(impl, headers, prefixes=[b"a", b"i", b"c"])
    assert (result.authorization, result.idempotency_key, result.content_length) == (b"Bearer t", b"k", 3)
    assert result.forward == b""


def test_rules_are_kept_folded(impl: ModuleType) -> None:
    built = rules(impl, [b"X_Forwarded-USER", b"cookie"], [b"X_Auth_Request-"], underscores=True)
    assert (built.names, built.prefixes, built.underscores) == (
        frozenset({b"x-forwarded-user", b"cookie"}), (b"x-auth-request-",), True)
    with pytest.raises(AttributeError):
        built.underscores = False


def test_rules_refuse_an_empty_prefix_and_text(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="empty prefix"):
        rules(impl, prefixes=[b"x-", b""])
    with pytest.raises(TypeError, match="bytes"):
        rules(impl, drop=["x-user"])
    with pytest.raises(TypeError, match="bytes"):
        rules(impl, prefixes=[bytearray(b"x-")])


#: names as CGI, WSGI, Rack and PHP upstreams read them: each imitates the header after it
IMITATIONS = [
    (b"X-Relay_Subject", b"X-Relay-Subject"), (b"X_Relay_Groups", b"X-Relay-Groups"),
    (b"X_Forwarded_User", b"X-Forwarded-User"), (b"X-Remote_User", b"X-Remote-User"),
    (b"X_AUTH_REQUEST_EMAIL", b"X-Auth-Request-Email"), (b"Remote_User", b"Remote-User"),
    (b"Content_Length", b"Content-Length"), (b"Transfer_Encoding", b"Transfer-Encoding"),
    (b"X_Forwarded_For", b"X-Forwarded-For"), (b"Idempotency_Key", b"Idempotency-Key"),
    (b"Keep_Alive", b"Keep-Alive"), (b"Proxy_Connection", b"Proxy-Connection"),
    (b"Proxy_Authorization", b"Proxy-Authorization"), (b"X-Flow_Tag", b"X-Flow-Tag"),
]  # fmt: skip
IMITATION_DROP = [b"x-forwarded-user", b"x-remote-user", b"remote-user", b"x-flow-tag"]


@pytest.mark.parametrize("underscores", [False, True])
@pytest.mark.parametrize(("spelled", "imitated"), IMITATIONS)
def test_underscore_spellings_of_stripped_or_read_names_never_pass(
    impl: ModuleType, underscores: bool, spelled: bytes, imitated: bytes
) -> None:
    value = {b"Content_Length": b"5", b"Transfer_Encoding": b"chunked"}.get(spelled, b"1.2.3.4")
    headers = [(b"Host", b"h"), (spelled, value), (b"Content-Length", b"2"), (b"X-Ok", b"1")]
    result = scan(impl, headers, IMITATION_DROP, [b"x-auth-request-"], underscores)
    assert result.forward == b"X-Ok: 1\r\n"
    # nor is it read as the header it imitates
    assert fields(result) == fields(scan(impl, [headers[0], *headers[2:]], IMITATION_DROP, [b"x-auth-request-"]))


def test_underscore_names_are_ignored_by_default(impl: ModuleType) -> None:
    headers = [(b"Host", b"h"), (b"Content-Length", b"5"), (b"Content_Length", b"6"), (b"X_Custom", b"1"),
               (b"Transfer_Encoding", b"chunked"), (b"X_Forwarded_For", b"6.6.6.6"), (b"Host_", b"x"),
               (b"Authorization_", b"Bearer x"), (b"_", b"u"), (b"X-Custom", b"2")]  # fmt: skip
    result = scan(impl, headers)
    assert (result.content_length, result.chunked, result.forwarded_for) == (5, False, None)
    assert (result.host, result.authorization, result.forward) == (b"h", None, b"X-Custom: 2\r\n")


def test_underscore_names_are_still_checked(impl: ModuleType) -> None:
    assert rejected(impl, [(b"X_Foo", b"a\nb")]) == "bad header value"
    assert rejected(impl, [(b"X_Foo(", b"a")]) == "bad header name"


def test_underscore_names_pass_verbatim_when_allowed(impl: ModuleType) -> None:
    headers = [(b"X_Custom", b"1"), (b"x_trace_ID", b"2"), (b"X-Relayed_By", b"3"), (b"_", b"4")]
    assert forward(impl, headers, IMITATION_DROP, underscores=True) == (
        b"X_Custom: 1\r\nx_trace_ID: 2\r\nX-Relayed_By: 3\r\n_: 4\r\n")


def test_connection_options_name_underscore_headers_exactly(impl: ModuleType) -> None:
    headers = [(b"Connection", b"x_hop"), (b"X_Hop", b"1"), (b"X-Hop", b"2")]
    assert forward(impl, headers, underscores=True) == b"X-Hop: 2\r\n"


#: what a caller may dress a stripped name up as
ATTACK_NAMES = st.builds(
    respell,
    st.one_of(st.sampled_from([*STRIPPED, b"x-relay-subject", b"x-relay-identity", b"x-relay-"]),
              st.builds(bytes.__add__, st.sampled_from(PREFIXES), st.text("-_aZ09", max_size=6).map(str.encode))),
    FLIPS, FLIPS,
)
HYPOTHESIS_ON_IMPL = settings(max_examples=400, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS_ON_IMPL
@given(names=st.lists(ATTACK_NAMES, min_size=1, max_size=6), underscores=st.booleans())
def test_no_spelling_of_a_stripped_name_is_forwarded(impl: ModuleType, names: list[bytes], underscores: bool) -> None:
    headers = [(b"Accept", b"*/*"), *((name, b"admin") for name in names), (b"X-Ok", b"1")]
    assert forward(impl, headers, STRIPPED, PREFIXES, underscores) == b"Accept: */*\r\nX-Ok: 1\r\n"


#: valid headers only, so that a name with `_` can be told apart by its effect alone
PLAIN_HEADERS = st.lists(st.tuples(SPELLED, st.sampled_from([b"1", b"7", b"chunked", b"close, x-a", b"v"])),
                         max_size=10)


@HYPOTHESIS_ON_IMPL
@given(headers=PLAIN_HEADERS, rule_args=RULES)
def test_underscore_names_ignored_or_imitating_nothing(
    impl: ModuleType, headers: list[tuple[bytes, bytes]], rule_args: RuleArgs
) -> None:
    drop, prefixes, _ = rule_args
    # off: as if never sent
    without = [(name, value) for name, value in headers if b"_" not in name]
    assert outcome(impl, headers, (drop, prefixes, False)) == outcome(impl, without, (drop, prefixes, False))
    # on: forwarded only when, read with `-`, they name nothing stripped, relay's or read by relay
    found = outcome(impl, headers, (drop, prefixes, True))
    if isinstance(found, tuple):
        return  # refused as a whole
    folded_drop = {fold(name) for name in drop}
    folded_prefixes = tuple(fold(prefix) for prefix in prefixes)
    read = {*NOT_FORWARDED, b"authorization", b"idempotency-key"}
    for name in forwarded_names(found["forward"]):
        folded = fold(name)
        assert folded not in folded_drop and not folded.startswith(folded_prefixes), name
        assert not folded.startswith(b"x-relay-"), name
        if b"_" in name:
            assert folded not in read, name


# ---------------------------------------------------------------------------------------
# Real requests through httptools, split at every point
# ---------------------------------------------------------------------------------------


class Collector:
    """Collects on_header pairs up to the end of the header block (trailers come later)."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def collect(request: bytes, cuts: list[int]) -> list[tuple[bytes, bytes]]:
    collector = Collector()
    parser = httptools.HttpRequestParser(collector)
    for start, end in zip([0, *cuts], [*cuts, len(request)]):
        parser.feed_data(request[start:end])
    assert collector.complete
    return collector.headers


REQUESTS = [
    b"POST /orders/ HTTP/1.1\r\nHost: relay.example\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n"
    b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nIdempotency-Key: 4f1c\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"
    b"X-Relay-Subject: admin\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n{}",
    b"GET /a HTTP/1.1\r\nhost:h\r\nX-Trailing:  spaced out \t \r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n"
    b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nExpect: 100-Continue\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked \r\nX-A: 1\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=["proxied", "odd-spacing", "chunked"])
def test_httptools_headers_at_every_split(impl: ModuleType, request_bytes: bytes) -> None:
    whole = collect(request_bytes, [])
    expected = fields(scan(impl, whole))
    for cut in range(1, len(request_bytes)):
        headers = collect(request_bytes, [cut])
        assert headers == whole, cut
        assert fields(scan(impl, headers)) == expected, cut
    assert collect(request_bytes, list(range(1, len(request_bytes)))) == whole


def test_what_httptools_delivers() -> None:
    headers = collect(REQUESTS[1], list(range(1, len(REQUESTS[1]))))
    assert (b"X-Trailing", b"spaced out \t ") in headers  # trailing whitespace is kept
    assert (b"X-Empty", b"") in headers
    assert collect(REQUESTS[2], [])[-1] == (b"X-A", b"1")  # trailers are not headers
    result = scan(_fastpath_py, headers)
    assert b"X-Trailing: spaced out\r\n" in result.forward
    assert b"X-Hop" not in result.forward


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"Accept", b"X-Forwarded-For", b"Connection", b"Expect", b"X-A"]),
            st.text("abc,; \t-", max_size=10).map(lambda s: s.encode().strip(b" \t")),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(1, 400), max_size=6).map(sorted),
)
def test_httptools_random_splits_agree(headers: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    request = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
    cuts = sorted({c for c in cuts if c < len(request)})
    collected = collect(request, cuts)
    assert collected == [(b"Host", b"h"), *headers]
    if COMPILED is not None:
        no_rules: RuleArgs = (NO_DROP, [], False)
        assert outcome(COMPILED, collected, no_rules) == outcome(_fastpath_py, collected, no_rules)


# ---------------------------------------------------------------------------------------
# relay.fastpath picks the implementation
# ---------------------------------------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RELAY_NO_EXTENSIONS"}
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip


REPORT = "import relay.fastpath as f; print(f.COMPILED, f._impl.__name__)"


def test_fastpath_prefers_compiled() -> None:
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    assert run_python(REPORT).stdout.split() == ["True", "relay._fastpath"]
    assert run_python(REPORT, RELAY_NO_EXTENSIONS="0").stdout.split() == ["True", "relay._fastpath"]


def test_fastpath_env_forces_twin() -> None:
    done = run_python(REPORT, RELAY_NO_EXTENSIONS="1")
    assert done.stdout.split() == ["False", "relay._fastpath_py"]
    assert done.stderr == ""


def test_fastpath_falls_back_with_warning_when_not_built() -> None:
    # sys.modules[name] = None makes importing that module raise ImportError, as when the
    # extension was never built.
    code = "import sys, logging; logging.basicConfig(); sys.modules['relay._fastpath'] = None; "
    done = run_python(code + REPORT)
    assert done.stdout.split() == ["False", "relay._fastpath_py"]
    assert "WARNING:relay.fastpath:compiled fast path unavailable" in done.stderr
