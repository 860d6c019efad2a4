"""The pure parts of relay's token endpoints: the [tokens] table and the flow keys,
form bodies, the request checks of a token exchange, and relay's own tokens read back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relay.errors import Unauthorized
from relay.identity.jose import parse_compact
from relay.tokens.issue import ACCESS_TOKEN_TYPE, EXCHANGE_GRANT, check_request
from relay.tokens.oauth import OAuthError, check_form_type, parse_form
from relay.tokens.own import OwnTokens, flows_of_scope
from test_identity_support import relay_signer
from test_config import ISSUER, doc, here, load, problems_of  # noqa: F401 (here is a fixture)

TOKENS = '[tokens]\nissuer = "https://relay.example"'
FLOW = '[[flow]]\nname = "orders"\npath = "/orders/"\nsink = "api"\nmax_token_ttl = "10m"\nactor_must_be_allowed = true'


def test_tokens_table_defaults(here: Path) -> None:
    config = load(here, doc(flows=FLOW + "\n\n" + TOKENS))
    assert config.tokens is not None
    assert (config.tokens.issuer, config.tokens.metadata_path) == ("https://relay.example",
                                                                   "/.well-known/oauth-authorization-server")
    assert (config.tokens.token_path, config.tokens.introspection_path) == ("/oauth/token", "/oauth/introspect")
    assert config.flows[0].max_token_ttl == 600.0 and config.flows[0].actor_must_be_allowed
    assert load(here, doc()).tokens is None and load(here, doc()).flows[0].max_token_ttl is None


@pytest.mark.parametrize("tokens, key, words", [
    ('[tokens]\nissuer = "relay"', "tokens.issuer", "https URL"),
    ('[tokens]\nissuer = "https://idp.example.test/"', "tokens.issuer", "already the issuer"),
    ('[tokens]\nissuer = "https://r.example?x=1"', "tokens.issuer", "no query"),
    ('[tokens]\nissuer = "https://r"\ntoken_path = "/orders/"', "tokens.token_path", "must not end with '/'"),
    ('[tokens]\nissuer = "https://r"\ntoken_path = "/.well-known/oauth-authorization-server"',
     "tokens.token_path", "must differ"),
    ('[tokens]\nissuer = "https://r"\nsubject_issuers = ["nope"]', "tokens.subject_issuers[0]", "unknown issuer"),
    ('[tokens]\nissuer = "https://r"\ncolour = "red"', "tokens.colour", ""),
    ("[tokens]", "tokens.issuer", ""),
])
def test_tokens_table_problems(here: Path, tokens: str, key: str, words: str) -> None:
    problems = problems_of(here, doc(issuer=ISSUER, flows=FLOW + "\n\n" + tokens))
    assert any(p.key == key and words in p.message for p in problems), problems


def test_a_flow_may_not_take_an_endpoint_path(here: Path) -> None:
    flow = '[[flow]]\nname = "t"\npath = "/oauth/token"\nsink = "api"'
    problems = problems_of(here, doc(flows=flow + "\n\n" + TOKENS))
    assert [p.key for p in problems] == ["tokens.token_path"]


def test_max_token_ttl_is_a_bounded_duration(here: Path) -> None:
    problems = problems_of(here, doc(flows=FLOW.replace('"10m"', '"0s"')))
    assert [p.key for p in problems] == ["flow[0].max_token_ttl"]


def test_forms() -> None:
    assert parse_form(b"a=1&b=x%20y&c=") == {"a": "1", "b": "x y"}
    assert parse_form(b"") == {}
    for bad in (b"a=1&a=2", b"\xff=1", b"novalue&&"):
        with pytest.raises(OAuthError) as caught:
            parse_form(bad)
        assert caught.value.code == "invalid_request" and caught.value.status == 400


def test_only_a_form_is_a_form() -> None:
    for good in (b"application/x-www-form-urlencoded", b"Application/X-WWW-Form-URLEncoded ; charset=utf-8"):
        check_form_type([good])
    for bad in ([], [b"text/plain"], [b"application/json"], [b"application/x-www-form-urlencoded-ish"],
                [b"application/x-www-form-urlencoded"] * 2):
        with pytest.raises(OAuthError) as caught:
            check_form_type(bad)
        assert (caught.value.code, caught.value.reason) == ("invalid_request", "not_a_form")


def test_scope_values_name_flows() -> None:
    assert flows_of_scope("flow:a flow:b flow:a other") == ("a", "b")
    assert flows_of_scope("") == ()


@pytest.mark.parametrize("form, code", [
    ({}, "invalid_request"),
    ({"grant_type": "password"}, "unsupported_grant_type"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": "saml"}, "invalid_request"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": ACCESS_TOKEN_TYPE,
      "actor_token": "a"}, "invalid_request"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": ACCESS_TOKEN_TYPE,
      "actor_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": ACCESS_TOKEN_TYPE,
      "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request"),
    ({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": ACCESS_TOKEN_TYPE,
      "audience": "https://elsewhere"}, "invalid_target"),
])
def test_exchange_requests_are_checked(form: dict[str, str], code: str) -> None:
    with pytest.raises(OAuthError) as caught:
        check_request(form)
    assert caught.value.code == code


def test_a_well_formed_request_passes() -> None:
    check_request({"grant_type": EXCHANGE_GRANT, "subject_token": "t", "subject_token_type": ACCESS_TOKEN_TYPE})


def test_relay_reads_its_own_tokens_back(tmp_path: Path) -> None:
    signer = relay_signer(str(tmp_path / "key.pem"))
    own = OwnTokens("https://relay.example", signer)
    now = int(time.time())
    claims = {"iss": own.issuer, "aud": own.issuer, "sub": "alice", "idp": "dev", "groups": ["g"],
              "scope": "flow:a flow:b", "jti": "j1", "iat": now, "exp": now + 60}
    identity, until = own.verify(parse_compact(signer.sign(claims)), now)
    assert (identity.subject, identity.issuer, identity.jti, until) == ("alice", "dev", "j1", now + 60)
    assert identity.flows == frozenset({"a", "b"}) and identity.groups == ("g",)
    for changed, reason in ((dict(aud="https://other"), "audience"), (dict(exp=now - 1), "expired"),
                            (dict(jti=""), "malformed"), (dict(groups="g"), "malformed")):
        with pytest.raises(Unauthorized) as caught:
            own.verify(parse_compact(signer.sign(claims | changed)), now)
        assert caught.value.reason == reason
    stranger = relay_signer(str(tmp_path / "other.pem"))
    with pytest.raises(Unauthorized) as caught:
        own.verify(parse_compact(stranger.sign(claims)), now)
    assert caught.value.reason == "unknown_kid"
