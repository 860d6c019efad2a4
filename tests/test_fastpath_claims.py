"""ClaimRules, ClaimPath and identity_block: the claims of a verified token and
the identity headers they become, on both implementations, and the compiled held to the twin."""

from __future__ import annotations

from types import MappingProxyType, ModuleType
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import Unauthorized
from support.impls import COMPILED, NOT_BUILT, TWIN

NOW = 1_800_000_000.0
BASE = {"exp": 1_800_000_600, "aud": "relay", "sub": "alice"}


def rules(impl: ModuleType, leeway: float = 30.0, **paths: str) -> Any:
    where = {"audience": "aud", "subject": "sub", "groups": "groups", "scopes": "scope", **paths}
    return impl.ClaimRules(("relay", "other"), leeway, **where)


def refusal(impl: ModuleType, payload: dict[str, Any], now: float = NOW, **paths: str) -> tuple[str, str]:
    with pytest.raises(Unauthorized) as caught:
        rules(impl, **paths).check(payload, now)
    return caught.value.reason, str(caught.value)


# -- the checks, in order ------------------------------------------------------------------


def test_a_good_payload_gives_the_caller(impl: ModuleType) -> None:
    payload = {**BASE, "groups": ["a", "b"], "scope": "read  write\tadmin", "jti": "j-1", "iat": NOW, "nbf": NOW}
    assert rules(impl).check(payload, NOW) == ("alice", ("a", "b"), ("read", "write", "admin"), "j-1", 1_800_000_600)


@pytest.mark.parametrize("exp", [None, "1800000600", 1_800_000_600.0, True, [1]])
def test_exp_must_be_an_integer(impl: ModuleType, exp: Any) -> None:
    assert refusal(impl, {**BASE, "exp": exp}) == ("malformed", "'exp' is missing or not an integer")


def test_expiry_has_the_leeway_and_no_more(impl: ModuleType) -> None:
    assert rules(impl).check({**BASE, "exp": int(NOW) - 30}, NOW)[4] == int(NOW) - 30
    assert refusal(impl, {**BASE, "exp": int(NOW) - 31}) == ("expired", "token has expired")
    assert refusal(impl, {**BASE, "exp": int(NOW) - 30}, NOW + 0.5) == ("expired", "token has expired")


@pytest.mark.parametrize("exp, held", [(2**63 - 1, 2**53), (10**400, 2**53), (2**53 + 1, 2**53)])
def test_an_exp_beyond_any_clock_is_never_reached(impl: ModuleType, exp: int, held: int) -> None:
    assert rules(impl).check({**BASE, "exp": exp}, NOW)[4] == held


@pytest.mark.parametrize("exp", [-(2**63), -(10**400), -1, 0])
def test_an_exp_long_past_has_expired(impl: ModuleType, exp: int) -> None:
    assert refusal(impl, {**BASE, "exp": exp})[0] == "expired"


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_and_iat_not_in_the_future_beyond_the_leeway(impl: ModuleType, name: str) -> None:
    assert rules(impl).check({**BASE, name: NOW + 30}, NOW)[0] == "alice"
    assert rules(impl).check({**BASE, name: int(NOW) + 30}, NOW)[0] == "alice"
    future = ("not_yet_valid", f"token '{name}' is in the future")
    assert refusal(impl, {**BASE, name: NOW + 30.001}) == future
    assert refusal(impl, {**BASE, name: int(NOW) + 31}) == future
    assert refusal(impl, {**BASE, name: 10**400}) == future
    assert rules(impl).check({**BASE, name: -(10**400)}, NOW)[0] == "alice"


@pytest.mark.parametrize("value", ["1800000000", True, [1], {}])
@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_and_iat_must_be_numbers(impl: ModuleType, name: str, value: Any) -> None:
    assert refusal(impl, {**BASE, name: value}) == ("malformed", f"'{name}' is not a number")


@pytest.mark.parametrize("aud", [None, "relay-other", "", ["x", 7], [["relay"]], {"relay": 1}, 7])
def test_the_audience_must_be_ours(impl: ModuleType, aud: Any) -> None:
    assert refusal(impl, {**BASE, "aud": aud}) == ("audience", "token is not for this audience (other, relay)")


def test_an_audience_array_needs_one_of_ours(impl: ModuleType) -> None:
    assert rules(impl).check({**BASE, "aud": [7, None, "x", "other"]}, NOW)[0] == "alice"


def test_the_audience_may_be_another_claim(impl: ModuleType) -> None:
    payload = {**BASE, "aud": "x", "client_id": "relay"}
    assert rules(impl, audience="client_id").check(payload, NOW)[0] == "alice"


@pytest.mark.parametrize("payload, detail", [
    ({**BASE, "sub": ""}, "token has no subject claim 'sub'"),
    ({**BASE, "sub": 7}, "token has no subject claim 'sub'"),
    ({"exp": BASE["exp"], "aud": "relay"}, "token has no subject claim 'sub'"),
    ({**BASE, "groups": ["a", 1]}, "claim 'groups' is not a string or an array of strings"),
    ({**BASE, "groups": [["a"]]}, "claim 'groups' is not a string or an array of strings"),
    ({**BASE, "groups": True}, "claim 'groups' is not a string or an array of strings"),
    ({**BASE, "scope": {"a": True}}, "claim 'scope' is not a string or an array of strings"),
    ({**BASE, "groups": 1, "scope": 1}, "claim 'groups' is not a string or an array of strings"),
])  # fmt: skip
def test_the_mapping_refuses_wrong_types(impl: ModuleType, payload: dict[str, Any], detail: str) -> None:
    assert refusal(impl, payload) == ("malformed", detail)


def test_checks_fail_in_their_order(impl: ModuleType) -> None:
    worst = {"exp": 1, "nbf": "soon", "aud": "x", "sub": 7}
    assert refusal(impl, worst)[0] == "expired"
    assert refusal(impl, {**worst, "exp": BASE["exp"]})[0] == "malformed"  # nbf
    assert refusal(impl, {**worst, "exp": BASE["exp"], "nbf": 0})[0] == "audience"
    assert refusal(impl, {**worst, "exp": BASE["exp"], "nbf": 0, "aud": "relay"})[0] == "malformed"  # sub


def test_a_jti_that_is_no_string_is_none(impl: ModuleType) -> None:
    assert rules(impl).check({**BASE, "jti": 7}, NOW)[3] is None


def test_paths_prefer_the_whole_name_then_walk_objects(impl: ModuleType) -> None:
    claims = {"a.b": "whole", "a": {"b": "nested", "c": {"d": "deep"}}, "n": None}
    for mapping in (claims, MappingProxyType(claims)):
        assert impl.ClaimPath("a.b").find(mapping) == "whole"
        assert impl.ClaimPath("a.c.d").find(mapping) == "deep"
        assert impl.ClaimPath("a.x").find(mapping) is None
        assert impl.ClaimPath("a.b.c").find({"a": {"b": 3}}) is None
        assert impl.ClaimPath("n").find(mapping) is None
    payload = {**BASE, "realm_access": {"roles": ["ops", "dev"]}, "user": {"id": "u-7"}}
    nested = rules(impl, groups="realm_access.roles", subject="user.id")
    assert nested.check(payload, NOW)[:2] == ("u-7", ("ops", "dev"))


# -- identity headers ----------------------------------------------------------------------


@pytest.mark.parametrize("text, sent", [
    ("alice@example.test", b"alice@example.test"),
    ("John Smith", b"John Smith"),
    ("two  spaces", b"two%20%20spaces"),
    ("evil\r\nX-Relay-Subject: root", b"evil%0D%0AX-Relay-Subject:%20root"),
    ("nul\x00byte", b"nul%00byte"),
    ("José", b"Jos%C3%A9"),
    ("100%", b"100%25"),
    ("a,b", b"a%2Cb"),
    (" padded ", b"%20padded%20"),
    (" ", b"%20"),
    ("", b""),
    ("tab\there", b"tab%09here"),
    ("del\x7f", b"del%7F"),
])  # fmt: skip
def test_header_values_are_safe_and_reversible(impl: ModuleType, text: str, sent: bytes) -> None:
    block = impl.identity_block(text, "idp", (text,))
    assert block.startswith(b"X-Relay-Subject: " + sent + b"\r\n")
    assert block.endswith(b"X-Relay-Groups: " + sent + b"\r\n")
    assert unquote(sent.decode("ascii")) == text


def test_the_identity_block(impl: ModuleType) -> None:
    assert impl.identity_block("alice", "idp", ("a", "b,c")) == (
        b"X-Relay-Subject: alice\r\nX-Relay-Issuer: idp\r\nX-Relay-Groups: a,b%2Cc\r\n")
    assert impl.identity_block("svc", "idp", ()).endswith(b"X-Relay-Groups: \r\n")


# -- compiled and twin alike ---------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["relay", "other", "alice", "a b"])
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.integers(min_value=1_799_999_900, max_value=1_800_000_100)
            | st.floats(allow_nan=False, allow_infinity=False) | _TEXT)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["b", "roles", "id"]), inner, max_size=3), max_leaves=6)
_NAMES = st.sampled_from(["exp", "nbf", "iat", "aud", "sub", "groups", "scope", "jti", "a", "a.b", "client_id"])
_PAYLOADS = st.fixed_dictionaries({}, optional={
    "exp": st.integers(min_value=1_799_999_900, max_value=1_800_000_100) | _SCALARS,
    "aud": st.sampled_from(["relay", "other", "nope"]) | st.lists(_SCALARS | st.just("relay"), max_size=3) | _JSON,
    "sub": _TEXT | _JSON,
}).flatmap(lambda base: st.dictionaries(_NAMES, _JSON, max_size=5).map(lambda more: {**more, **base}))
_PATHS = st.sampled_from(["sub", "groups", "scope", "a.b", "a", "a.roles", "aud", "client_id"])


def _checked(impl: ModuleType, payload: dict[str, Any], now: float, leeway: float, paths: dict[str, str]) -> object:
    try:
        return impl.ClaimRules(("relay", "other"), leeway, **paths).check(payload, now)
    except Unauthorized as refused:
        return refused.reason, str(refused)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=2000, deadline=None)
@given(payload=_PAYLOADS, now=st.floats(min_value=1_799_999_800, max_value=1_800_000_200),
       leeway=st.sampled_from([0.0, 0.5, 30.0, 60.0]),
       paths=st.fixed_dictionaries({"audience": _PATHS, "subject": _PATHS, "groups": _PATHS, "scopes": _PATHS}))
def test_compiled_and_twin_check_alike(payload: dict[str, Any], now: float, leeway: float,
                                       paths: dict[str, str]) -> None:  # fmt: skip
    assert _checked(COMPILED, payload, now, leeway, paths) == _checked(TWIN, payload, now, leeway, paths)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=1500, deadline=None)
@given(subject=_TEXT, issuer=_TEXT, groups=st.lists(st.text(max_size=8), max_size=4).map(tuple))
def test_compiled_and_twin_build_the_same_block(subject: str, issuer: str, groups: tuple[str, ...]) -> None:
    block = COMPILED.identity_block(subject, issuer, groups)
    assert block == TWIN.identity_block(subject, issuer, groups)
    lines = block.split(b"\r\n")
    assert len(lines) == 4 and lines[3] == b"" and not any(c < 0x20 or c == 0x7F for c in b"".join(lines))
    assert unquote(lines[0].removeprefix(b"X-Relay-Subject: ").decode("ascii")) == subject
