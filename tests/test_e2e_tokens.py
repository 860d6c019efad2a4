"""relay as an OAuth authorization server, through lighttpd: the metadata names the
endpoints; a user's token is exchanged for a flow-scoped token as an agent acting for
the user (RFC 8693), used, introspected (RFC 7662) and revoked; every way of asking for
more than the subject has is refused; the audit log has one record per token decision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from support import Relayd, Upstream, exchange, relay_config, request_bytes
from support.procs import Lighttpd
from support.rawhttp import Address
from support.stack import token_flow
from test_e2e_revocations import ask
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
RELAY_ISS = "https://relay.example.test"

TOKENS = f"""
[tokens]
issuer = "{RELAY_ISS}"

[[flow]]
name = "reports"
path = "/reports/"
methods = ["GET"]
allow = {{ groups = ["writers", "agents"] }}
max_token_ttl = "5m"
actor_must_be_allowed = true
sink = "up"

[[flow]]
name = "notes"
path = "/notes/"
methods = ["GET"]
allow = {{ groups = ["writers"] }}
max_token_ttl = "1m"
sink = "up"
"""


@pytest.fixture(scope="module")
def key() -> Key:
    return ec_key("ec-tokens")


def user_token(key: Key, sub: str, groups: list[str], **claims: Any) -> str:
    exp = good_claims()["iat"] + 3600
    return key.token(good_claims(sub=sub, jti=f"jti-{sub}", groups=groups, exp=exp) | claims).decode()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, key: Key) -> Iterator[tuple[Address, Path]]:
    workdir = tmp_path_factory.mktemp("tokens")
    (workdir / "jwks.json").write_bytes(jwks(key))
    text = relay_config(workdir, upstream.url, extra=token_flow(workdir / "jwks.json", ISS, AUD, "ES256") + TOKENS,
                        server=f'identity_key = "{workdir / "identity.pem"}"')
    relayd = Relayd(workdir, text)
    lighttpd = Lighttpd(workdir, relayd.unix)
    yield lighttpd.address, workdir
    lighttpd.stop()
    relayd.stop()


Answer = tuple[int, dict[str, Any], dict[str, str]]


def post(front: tuple[Address, Path], path: str, form: dict[str, str], token: str | None = None) -> Answer:
    body = urlencode(form).encode()
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    if token is not None:
        headers.append(("Authorization", "Bearer " + token))
    answer = exchange(front[0], request_bytes("POST", path, headers, body))
    return answer.status, json.loads(answer.body) if answer.body else {}, {k.lower(): v for k, v in answer.headers}


def get(front: tuple[Address, Path], path: str, token: str) -> int:
    return exchange(front[0], request_bytes("GET", path, [("Authorization", "Bearer " + token)])).status


def swap(front: tuple[Address, Path], subject: str, scope: str, actor: str | None = None) -> Answer:
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "scope": scope}
    if actor is not None:
        form |= {"actor_token": actor, "actor_token_type": ACCESS}
    return post(front, "/oauth/token", form)


def audit(front: tuple[Address, Path], event: str) -> list[dict[str, Any]]:
    lines = (front[1] / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_metadata_names_the_endpoints(front: tuple[Address, Path]) -> None:
    answer = exchange(front[0], request_bytes("GET", "/.well-known/oauth-authorization-server", []))
    assert answer.status == 200
    meta = json.loads(answer.body)
    assert meta["issuer"] == RELAY_ISS
    assert urlsplit(meta["token_endpoint"]).path == "/oauth/token"
    assert urlsplit(meta["introspection_endpoint"]).path == "/oauth/introspect"
    assert urlsplit(meta["jwks_uri"]).path == "/.well-known/relay-jwks.json"
    assert EXCHANGE in meta["grant_types_supported"]


def test_agent_walk_through(front: tuple[Address, Path], key: Key) -> None:
    alice, agent = user_token(key, "alice", ["writers"]), user_token(key, "agent-7", ["agents"])
    status, issued, headers = swap(front, alice, "flow:reports", agent)
    assert status == 200, issued
    assert headers["cache-control"] == "no-store"
    assert issued["token_type"] == "Bearer" and issued["issued_token_type"] == ACCESS
    assert 0 < issued["expires_in"] <= 300 and issued["scope"] == "flow:reports"
    token = issued["access_token"]
    assert get(front, "/reports/q1", token) == 200
    assert get(front, "/notes/q1", token) == 403  # a flow the token does not name
    assert get(front, "/secure/q1", token) == 403
    status, seen, _ = post(front, "/oauth/introspect", {"token": token}, alice)
    assert status == 200 and seen["active"] is True
    assert seen["sub"] == "alice" and seen["iss"] == RELAY_ISS and seen["scope"] == "flow:reports"
    assert seen["act"] == {"sub": "agent-7", "iss": ISS} and seen["exp"] > 0
    record = next(r for r in audit(front, "token_exchange") if r["jti"] == seen["jti"])
    assert record["decision"] == "allow" and record["subject"] == "alice"
    assert record["actor"] == {"sub": "agent-7", "iss": ISS} and record["flows"] == ["reports"]
    ask(front[1] / "admin.sock", "revoke", "jti", seen["jti"], "--ttl", "1h")
    assert get(front, "/reports/q1", token) == 401
    assert post(front, "/oauth/introspect", {"token": token}, alice)[1] == {"active": False}
    assert swap(front, token, "flow:reports")[1]["error"] == "invalid_request"  # a revoked subject token


def test_introspection_needs_a_caller(front: tuple[Address, Path], key: Key) -> None:
    assert post(front, "/oauth/introspect", {"token": "x"})[0] == 401
    alice = user_token(key, "alice", ["writers"])
    for garbage in ("x", "a.b.c", alice[:-4] + "AAAA"):
        assert post(front, "/oauth/introspect", {"token": garbage}, alice)[1] == {"active": False}
    assert post(front, "/oauth/introspect", {"token": alice}, alice)[1]["sub"] == "alice"
    reasons = [r["reason"] for r in audit(front, "token_introspection")]
    assert "active" in reasons and "bad_signature" in reasons


def test_the_smallest_lifetime_wins_and_relay_tokens_cannot_widen(front: tuple[Address, Path], key: Key) -> None:
    alice = user_token(key, "alice", ["writers"])
    status, both, _ = swap(front, alice, "flow:reports flow:notes")
    assert status == 200 and both["expires_in"] <= 60
    status, narrow, _ = swap(front, alice, "flow:reports")
    assert status == 200
    status, again, _ = swap(front, narrow["access_token"], "flow:reports")
    assert status == 200 and again["expires_in"] <= narrow["expires_in"]
    status, wider, _ = swap(front, narrow["access_token"], "flow:reports flow:notes")
    assert (status, wider["error"]) == (400, "invalid_scope")


@pytest.mark.parametrize("why, form, error", [
    ("no grant type", {"grant_type": ""}, "invalid_request"),
    ("another grant", {"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ("no subject token", {"subject_token": ""}, "invalid_request"),
    ("no subject token type", {"subject_token_type": ""}, "invalid_request"),
    ("garbage subject", {"subject_token": "not-a-token"}, "invalid_request"),
    ("no scope", {"scope": ""}, "invalid_scope"),
    ("a scope that is no flow", {"scope": "flow:reports admin"}, "invalid_scope"),
    ("an unknown flow", {"scope": "flow:nope"}, "invalid_scope"),
    ("a flow without max_token_ttl", {"scope": "flow:secure"}, "invalid_scope"),
    ("a built-in flow", {"scope": "flow:relay-oauth-token"}, "invalid_scope"),
    ("another audience", {"audience": "https://elsewhere.test"}, "invalid_target"),
])
def test_bad_requests_are_refused(front: tuple[Address, Path], key: Key, why: str, form: dict[str, str],
                                  error: str) -> None:
    base = {"grant_type": EXCHANGE, "subject_token": user_token(key, "alice", ["writers"]),
            "subject_token_type": ACCESS, "scope": "flow:reports"}
    status, answer, headers = post(front, "/oauth/token", base | form)
    assert (status, answer["error"]) == (400, error), why
    assert headers["cache-control"] == "no-store" and answer["error_description"]


def test_no_more_access_than_the_subject_and_actor_have(front: tuple[Address, Path], key: Key) -> None:
    alice, mallory = user_token(key, "alice", ["writers"]), user_token(key, "mallory", [])
    expired = user_token(key, "alice", ["writers"], exp=good_claims()["iat"] - 3600)
    assert swap(front, mallory, "flow:notes")[1]["error"] == "invalid_scope"
    assert swap(front, expired, "flow:notes")[1]["error"] == "invalid_request"
    assert swap(front, alice, "flow:reports", mallory)[1]["error"] == "invalid_scope"  # actor_must_be_allowed
    assert swap(front, alice, "flow:notes", mallory)[0] == 200  # notes does not ask about the actor
    assert swap(front, alice, "flow:reports", "garbage")[1]["error"] == "invalid_request"
    reasons = {r["reason"] for r in audit(front, "token_exchange")}
    assert {"subject_not_allowed", "subject_token_expired", "actor_not_allowed", "actor_token_malformed"} <= reasons
