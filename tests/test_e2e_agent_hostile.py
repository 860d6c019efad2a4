"""relay's OAuth endpoints against a client that knows only the RFCs, through lighttpd.

The client finds every endpoint in the RFC 8414 metadata, exchanges a user's token for a
flow-scoped one as an agent acting for the user (RFC 8693), uses, introspects (RFC 7662)
and revokes it, asks for a just-in-time grant; then tries every way the RFCs leave open
to get more than it was given. Each is refused with the RFC 6749 §5.2 error, nothing is
issued, and the audit log has one record per decision naming who asked, for whom, and
for which flows.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from support import Relayd, Upstream, exchange, relay_config, request_bytes
from support.procs import Lighttpd
from support.rawhttp import Address
from support.stack import token_flow
from test_e2e_revocations import ask
from test_e2e_grants import grantable
from test_e2e_tokens import ACCESS, EXCHANGE, RELAY_ISS, TOKENS
from test_identity_support import AUD, ISS, Key, b64, ec_key, forge, good_claims, jwks

FORM = ("Content-Type", "application/x-www-form-urlencoded")
OTHER_ISS = "https://other.example.test/"

OTHER = f"""
[[issuer]]
name = "other"
issuer = "{OTHER_ISS}"
audiences = ["{AUD}"]
jwks_file = "JWKS_OTHER"
algorithms = ["ES256"]
"""
# the flows of the token tests (reports asks about the actor, notes does not), subjects
# only from "idp", and a vault open by just-in-time grants
POLICY = (OTHER + TOKENS.replace("[tokens]\n", '[tokens]\nsubject_issuers = ["idp"]\n')
          + grantable("vault", "vault-users", "1h"))


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def error(self) -> str | None:
        return self.body.get("error")


class Client:
    """An OAuth client that knows relay only by its issuer identifier and the RFCs."""

    def __init__(self, address: Address, workdir: Path, key: Key, other: Key) -> None:
        self.address = address
        self.workdir = workdir
        self.key = key
        self.other = other
        # RFC 8414 §3: the one path a client may assume
        meta = self.call("GET", "/.well-known/oauth-authorization-server").body
        assert meta["issuer"] == RELAY_ISS
        self.token_endpoint = self._path(meta["token_endpoint"])
        self.introspection_endpoint = self._path(meta["introspection_endpoint"])
        self.grants_endpoint = self._path(meta["relay_grants_endpoint"])
        self.jwks_uri = self._path(meta["jwks_uri"])
        self.grant_types = tuple(meta["grant_types_supported"])

    @staticmethod
    def _path(url: str) -> str:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == RELAY_ISS, url  # under the issuer identifier
        return parts.path

    def user(self, sub: str, groups: list[str], key: Key | None = None, **claims: Any) -> str:
        issuer = ISS if key is None or key is self.key else OTHER_ISS
        exp = good_claims()["iat"] + 3600
        fields = good_claims(iss=issuer, sub=sub, jti=f"jti-{sub}-{time.monotonic_ns()}", groups=groups, exp=exp)
        return (key or self.key).token(fields | claims).decode()

    def call(self, method: str, path: str, body: bytes | None = None, headers: list[tuple[str, str]] | None = None,
             token: str | None = None) -> Answer:  # fmt: skip
        sent = list(headers or [])
        if token is not None:
            sent.append(("Authorization", "Bearer " + token))
        answer = exchange(self.address, request_bytes(method, path, sent, body))
        try:
            document = json.loads(answer.body) if answer.body else {}
        except ValueError:
            document = {}
        return Answer(answer.status, document if isinstance(document, dict) else {},
                      {k.lower(): v for k, v in answer.headers})  # fmt: skip

    def form(self, path: str, pairs: list[tuple[str, str]], token: str | None = None) -> Answer:
        return self.call("POST", path, urlencode(pairs).encode(), [FORM], token)

    def swap(self, subject: str, scope: str, actor: str | None = None, **more: str) -> Answer:
        pairs = [("grant_type", EXCHANGE), ("subject_token", subject), ("subject_token_type", ACCESS),
                 ("scope", scope)]  # fmt: skip
        if actor is not None:
            pairs += [("actor_token", actor), ("actor_token_type", ACCESS)]
        return self.form(self.token_endpoint, pairs + list(more.items()))

    def introspect(self, token: str, caller: str) -> dict[str, Any]:
        answer = self.form(self.introspection_endpoint, [("token", token)], caller)
        assert answer.status == 200 and answer.headers["cache-control"] == "no-store", answer
        return answer.body

    def use(self, token: str, path: str = "/reports/q1") -> int:
        return self.call("GET", path, token=token).status

    def grants(self, method: str, path: str, token: str, fields: dict[str, str] | None = None) -> Answer:
        body = json.dumps(fields).encode() if fields is not None else b""
        return self.call(method, self.grants_endpoint + path, body, [("Content-Type", "application/json")], token)

    def records(self, event: str, **match: Any) -> list[dict[str, Any]]:
        lines = (self.workdir / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines)
                if r.get("event") == event and all(r.get(k) == v for k, v in match.items())]  # fmt: skip

    def issued(self) -> int:
        return len(self.records("token_exchange", decision="allow"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Client]:
    workdir = tmp_path_factory.mktemp("hostile")
    key, other = ec_key("ec-hostile"), ec_key("ec-other")
    (workdir / "jwks.json").write_bytes(jwks(key))
    (workdir / "other.json").write_bytes(jwks(other))
    policy = POLICY.replace("JWKS_OTHER", str(workdir / "other.json"))
    extra = token_flow(workdir / "jwks.json", ISS, AUD, "ES256") + policy
    relayd = Relayd(workdir, relay_config(workdir, upstream.url, extra=extra,
                                          server=f'identity_key = "{workdir / "identity.pem"}"'))  # fmt: skip
    lighttpd = Lighttpd(workdir, relayd.unix)
    yield Client(lighttpd.address, workdir, key, other)
    lighttpd.stop()
    relayd.stop()


def refused(client: Client, answer: Answer, error: str, before: int) -> str:
    """``answer`` is an RFC 6749 §5.2 refusal with ``error``, and no token was issued; its audit reason."""
    assert (answer.status, answer.error) == (400, error), answer
    assert answer.body["error_description"] and "access_token" not in answer.body
    assert answer.headers["cache-control"] == "no-store"
    assert client.issued() == before
    rid = answer.headers["x-relay-request-id"]
    records = client.records("token_exchange", request_id=rid)
    (record,) = records
    assert record["decision"] == "deny"
    return str(record["reason"])


def test_discovery_names_everything(client: Client) -> None:
    assert EXCHANGE in client.grant_types
    keys = client.call("GET", client.jwks_uri).body["keys"]
    assert keys and all(k["kty"] == "OKP" and k["kid"] for k in keys)


def test_the_whole_walk(client: Client) -> None:
    alice, agent = client.user("alice", ["writers"]), client.user("agent-7", ["agents"])
    answer = client.swap(alice, "flow:reports", agent)
    assert answer.status == 200, answer
    assert answer.headers["cache-control"] == "no-store"
    token = answer.body["access_token"]
    assert answer.body["issued_token_type"] == ACCESS and 0 < answer.body["expires_in"] <= 300
    assert client.use(token) == 200

    seen = client.introspect(token, alice)
    assert seen["active"] is True and seen["sub"] == "alice" and seen["scope"] == "flow:reports"
    assert seen["act"] == {"sub": "agent-7", "iss": ISS}
    (issued,) = client.records("token_exchange", jti=seen["jti"])
    assert issued["subject"] == "alice" and issued["actor"] == {"sub": "agent-7", "iss": ISS}
    assert issued["flows"] == ["reports"] and issued["decision"] == "allow"
    looked = client.records("token_introspection", jti=seen["jti"])
    assert looked[-1]["reason"] == "active" and looked[-1]["caller"]["sub"] == "alice"
    assert looked[-1]["subject"] == "alice" and looked[-1]["flows"] == ["reports"]

    ask(client.workdir / "admin.sock", "revoke", "jti", seen["jti"], "--ttl", "1h")
    assert client.use(token) == 401
    assert client.introspect(token, alice) == {"active": False}
    assert client.records("token_introspection", jti=None)[-1]["reason"] == "revoked"
    before = client.issued()
    assert refused(client, client.swap(token, "flow:reports"), "invalid_request", before) == "subject_token_revoked"


def test_a_grant_asked_approved_used_and_revoked(client: Client) -> None:
    bob, olivia = client.user("bob", ["analysts"]), client.user("olivia", ["data-owners"])
    before = client.issued()
    refused(client, client.swap(bob, "flow:vault"), "invalid_scope", before)  # no access, no grant yet
    elsewhere = client.user("bob", ["analysts"], client.other)  # not an issuer of subjects
    assert client.grants("POST", "", elsewhere, {"flow": "vault", "reason": "x"}).error == "issuer_not_accepted"
    asked = client.grants("POST", "", bob, {"flow": "vault", "reason": "incident 9", "ttl": "30m"})
    assert asked.status == 202, asked
    grant_id = asked.body["grant_id"]
    assert asked.headers["location"] == f"{client.grants_endpoint}/{grant_id}"
    assert client.grants("POST", f"/{grant_id}/approve", bob).error == "self_approval"
    approved = client.grants("POST", f"/{grant_id}/approve", olivia)
    assert approved.status == 200 and approved.body["status"] == "approved", approved

    answer = client.swap(bob, "flow:vault")
    assert answer.status == 200, answer
    token = answer.body["access_token"]
    assert client.use(token, "/vault/x") == 200
    assert client.use(token, "/reports/x") == 403

    ask(client.workdir / "admin.sock", "grants", "revoke", grant_id)
    assert client.use(token, "/vault/x") == 401
    assert client.introspect(token, olivia) == {"active": False}
    before = client.issued()
    assert refused(client, client.swap(token, "flow:vault"), "invalid_request", before) == "subject_token_grant_ended"
    refused(client, client.swap(bob, "flow:vault"), "invalid_scope", before)

    records = client.records("grant", grant_id=grant_id)
    assert [(r["action"], r["decision"], r["reason"]) for r in records] == [
        ("request", "allow", "done"), ("approve", "deny", "self_approval"), ("approve", "allow", "done"),
        ("revoke", "allow", "done")]
    assert all(r["subject"] == "bob" and r["flows"] == ["vault"] for r in records)
    assert records[0]["actor"] == records[1]["actor"] == {"sub": "bob", "iss": "idp"}
    assert records[2]["approver"] == records[3]["approver"] == {"sub": "olivia", "iss": "idp"}
    assert records[3]["actor"] == {"sub": "operator", "iss": "relayctl"}
    (used,) = [r for r in client.records("token_exchange", decision="allow") if r["subject"] == "bob"]
    assert used["grants"] == [grant_id] and used["flows"] == ["vault"]


def test_an_approver_cannot_approve_their_own_request(client: Client) -> None:
    # olivia approves the vault's grants, and would like one herself
    olivia = client.user("olivia-2", ["data-owners"])
    asked = client.grants("POST", "", olivia, {"flow": "vault", "reason": "just because"})
    assert asked.status == 202, asked
    answer = client.grants("POST", f"/{asked.body['grant_id']}/approve", olivia)
    assert (answer.status, answer.error) == (403, "self_approval")
    assert client.grants("GET", f"/{asked.body['grant_id']}", olivia).body["status"] == "pending"
    before = client.issued()
    refused(client, client.swap(olivia, "flow:vault"), "invalid_scope", before)


# --- the scope, the flows, the lifetime ---------------------------------------------------


@pytest.mark.parametrize("why, scope, error, reason", [
    ("more flows than the subject may have", "flow:reports flow:secure", "invalid_scope", "flow_not_exchangeable"),
    ("a flow without max_token_ttl", "flow:secure", "invalid_scope", "flow_not_exchangeable"),
    ("a flow the subject is not allowed", "flow:vault", "invalid_scope", "subject_not_allowed"),
    ("a built-in flow", "flow:relay-oauth-introspect", "invalid_scope", "unknown_flow"),
    ("a scope that is not a flow", "flow:reports openid", "invalid_scope", "bad_scope"),
    ("a flow named twice", "flow:reports flow:reports", "invalid_scope", "bad_scope"),
])
def test_scope_cannot_widen(client: Client, why: str, scope: str, error: str, reason: str) -> None:
    before = client.issued()
    assert refused(client, client.swap(client.user("carol", ["writers"]), scope), error, before) == reason, why


@pytest.mark.parametrize("why, more, error", [
    ("a token type relay does not issue", {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
     "invalid_request"),
    ("an id token", {"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
    ("a resource", {"resource": "https://relay.example.test/reports/"}, "invalid_target"),
    ("an audience", {"audience": RELAY_ISS}, "invalid_target"),
])
def test_no_other_kind_or_target_of_token(client: Client, why: str, more: dict[str, str], error: str) -> None:
    before = client.issued()
    refused(client, client.swap(client.user("carol", ["writers"]), "flow:notes", **more), error, before)


def test_lifetime_parameters_are_not_obeyed(client: Client) -> None:
    # RFC 6749 §3.2/§4.1.3: parameters a server does not know are ignored; none may lengthen a token
    carol = client.user("carol", ["writers"])
    answer = client.swap(carol, "flow:notes", expires_in="86400", exp=str(int(time.time()) + 86400),
                         requested_token_type="urn:ietf:params:oauth:token-type:jwt", max_age="86400")
    assert answer.status == 200, answer
    assert 0 < answer.body["expires_in"] <= 60
    assert answer.body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    seen = client.introspect(answer.body["access_token"], carol)
    assert seen["exp"] - time.time() <= 60


# --- the subject and actor tokens ------------------------------------------------------------


def test_subject_tokens_that_prove_nothing(client: Client) -> None:
    carol = client.user("carol", ["writers"])
    cases = {
        "expired": client.user("carol", ["writers"], exp=int(time.time()) - 60),
        "another issuer (not in subject_issuers)": client.user("carol", ["writers"], client.other),
        "signed by the other issuer's key, claiming the first": client.other.token(
            good_claims(sub="carol", groups=["writers"]), kid=client.key.kid).decode(),
        "alg none": forge({"alg": "none", "typ": "JWT"}, good_claims(sub="carol", groups=["writers"])).decode(),
        "tampered payload": _with_payload(carol, good_claims(sub="carol", groups=["writers", "vault-users"])),
    }
    reasons = {}
    for why, subject in cases.items():
        before = client.issued()
        reasons[why] = refused(client, client.swap(subject, "flow:notes"), "invalid_request", before)
    assert reasons == {
        "expired": "subject_token_expired", "another issuer (not in subject_issuers)": "subject_token_issuer",
        "signed by the other issuer's key, claiming the first": "subject_token_bad_signature",
        "alg none": "subject_token_algorithm", "tampered payload": "subject_token_bad_signature",
    }
    # the other issuer is a fine actor still: subject_issuers speaks of subjects
    assert client.swap(carol, "flow:notes", client.user("agent-8", [], client.other)).status == 200


def test_actors_must_be_allowed_where_the_flow_says_so(client: Client) -> None:
    carol, mallory = client.user("carol", ["writers"]), client.user("mallory", [])
    before = client.issued()
    answer = client.swap(carol, "flow:reports", mallory)
    assert refused(client, answer, "invalid_scope", before) == "actor_not_allowed"
    (record,) = client.records("token_exchange", request_id=answer.headers["x-relay-request-id"])
    assert record["subject"] == "carol" and record["actor"] == {"sub": "mallory", "iss": ISS}
    assert record["flows"] == ["reports"]
    expired_agent = client.user("agent-7", ["agents"], exp=int(time.time()) - 60)
    assert refused(client, client.swap(carol, "flow:reports", expired_agent), "invalid_request",
                   before) == "actor_token_expired"  # fmt: skip
    revoked_agent = client.user("agent-7", ["agents"])
    ask(client.workdir / "admin.sock", "revoke", "jti", _claims(revoked_agent)["jti"], "--ttl", "1h")
    assert refused(client, client.swap(carol, "flow:reports", revoked_agent), "invalid_request",
                   before) == "actor_token_revoked"  # fmt: skip


# --- relay's own tokens ----------------------------------------------------------------------


def test_chaining_never_widens_nor_lengthens_nor_sheds_the_actor(client: Client) -> None:
    carol, agent = client.user("carol", ["writers"]), client.user("agent-7", ["agents"])
    first = client.swap(carol, "flow:reports", agent)
    assert first.status == 200, first
    token = first.body["access_token"]
    exp = client.introspect(token, carol)["exp"]
    before = client.issued()
    wider = client.swap(token, "flow:reports flow:notes")
    assert refused(client, wider, "invalid_scope", before) == "subject_not_allowed"
    assert refused(client, client.swap(token, "flow:notes"), "invalid_scope", before) == "subject_not_allowed"
    mallory = client.user("mallory", [])
    assert refused(client, client.swap(token, "flow:reports", mallory), "invalid_scope", before) == "actor_not_allowed"

    again = client.swap(token, "flow:reports", expires_in="3600")
    assert again.status == 200, again
    seen = client.introspect(again.body["access_token"], carol)
    assert seen["exp"] <= exp and seen["sub"] == "carol"
    assert seen["act"] == {"sub": "agent-7", "iss": ISS}  # who acted is never forgotten by re-exchanging
    # the re-exchanged token cannot be used to shake off its actor through a new one either
    chained = client.swap(again.body["access_token"], "flow:reports", client.user("agent-9", ["agents"]))
    assert chained.status == 200, chained
    assert client.introspect(chained.body["access_token"], carol)["act"] == {
        "sub": "agent-9", "iss": ISS, "act": {"sub": "agent-7", "iss": ISS}}


def test_relay_tokens_that_were_tampered_with(client: Client) -> None:
    carol = client.user("carol", ["writers"])
    token = client.swap(carol, "flow:notes").body["access_token"]
    claims = _claims(token)
    wider = _with_payload(token, claims | {"scope": "flow:notes flow:reports", "exp": claims["exp"] + 86400})
    none = forge({"alg": "none", "kid": json.loads(_b64decode(token.split(".")[0]))["kid"]}, claims).decode()
    confused = client.key.token(claims, kid=None).decode()  # the issuer's key, relay's claims
    for forged in (wider, none, confused):
        assert client.use(forged, "/notes/x") == 401
        assert client.use(forged, "/reports/x") == 401
        assert client.introspect(forged, carol) == {"active": False}
        before = client.issued()
        refused(client, client.swap(forged, "flow:notes"), "invalid_request", before)
    assert client.use(token, "/notes/x") == 200 and client.use(token, "/reports/x") == 403
    reasons = [r["reason"] for r in client.records("token_introspection")[-3:]]
    assert reasons == ["bad_signature", "algorithm", "algorithm"]


def test_relay_tokens_have_no_standing_at_the_grants_endpoint(client: Client) -> None:
    olivia = client.user("olivia", ["data-owners", "writers"])
    token = client.swap(olivia, "flow:notes").body["access_token"]
    asked = client.grants("POST", "", client.user("dave", ["analysts"]), {"flow": "vault", "reason": "x"})
    assert asked.status == 202
    assert client.grants("POST", f"/{asked.body['grant_id']}/approve", token).status in (401, 403)
    assert client.grants("POST", "", token, {"flow": "vault", "reason": "x"}).status in (401, 403)
    assert client.grants("GET", f"/{asked.body['grant_id']}", olivia).body["status"] == "pending"


# --- the request itself ------------------------------------------------------------------------


def _exchange_pairs(client: Client) -> list[tuple[str, str]]:
    return [("grant_type", EXCHANGE), ("subject_token", client.user("carol", ["writers"])),
            ("subject_token_type", ACCESS), ("scope", "flow:notes")]  # fmt: skip


@pytest.mark.parametrize("name, value", [
    ("scope", "flow:reports"), ("subject_token", "x"), ("grant_type", EXCHANGE), ("sc%6Fpe", "flow:notes"),
])
def test_parameters_given_twice(client: Client, name: str, value: str) -> None:
    body = urlencode(_exchange_pairs(client)) + f"&{name}={value}"
    before = client.issued()
    answer = client.call("POST", client.token_endpoint, body.encode(), [FORM])
    assert refused(client, answer, "invalid_request", before) == "repeated_parameter"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x", None])
def test_only_a_form_is_read(client: Client, content_type: str | None) -> None:
    body = urlencode(_exchange_pairs(client)).encode()
    headers = [("Content-Type", content_type)] if content_type else []
    before = client.issued()
    answer = client.call("POST", client.token_endpoint, body, headers)
    assert refused(client, answer, "invalid_request", before) == "not_a_form"


def test_a_form_with_its_charset_is_read(client: Client) -> None:
    body = urlencode(_exchange_pairs(client)).encode()
    answer = client.call("POST", client.token_endpoint, body,
                         [("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=UTF-8")])  # fmt: skip
    assert answer.status == 200, answer


def test_a_json_body_is_refused(client: Client) -> None:
    body = json.dumps(dict(_exchange_pairs(client))).encode()
    before = client.issued()
    assert refused(client, client.call("POST", client.token_endpoint, body, [FORM]), "invalid_request",
                   before) == "malformed_form"  # fmt: skip


def test_the_token_endpoint_takes_only_post(client: Client) -> None:
    query = urlencode(_exchange_pairs(client))
    before = client.issued()
    for method in ("GET", "PUT", "HEAD"):
        answer = client.call(method, f"{client.token_endpoint}?{query}")
        assert answer.status == 405 and "POST" in answer.headers["allow"], method
        assert "access_token" not in answer.body
    assert client.issued() == before
    # the refusals' records name the path alone: no part of the token sent in the query
    subject_token = dict(_exchange_pairs(client))["subject_token"]
    assert subject_token[:24] not in (client.workdir / "audit.jsonl").read_text()


def test_parameters_in_the_query_do_not_count(client: Client) -> None:
    # RFC 6749 §3.2: the token request is the form body; a query cannot add to it or widen it
    pairs = _exchange_pairs(client)
    answer = client.call("POST", f"{client.token_endpoint}?scope=flow:reports", urlencode(pairs).encode(), [FORM])
    assert answer.status == 200 and answer.body["scope"] == "flow:notes", answer


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _claims(token: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_b64decode(token.split(".")[1]))
    return document


def _with_payload(token: str, claims: dict[str, Any]) -> str:
    head, _, signature = token.split(".")
    return ".".join((head, b64(json.dumps(claims).encode()), signature))
