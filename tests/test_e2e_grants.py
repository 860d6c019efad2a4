"""Just-in-time grants through lighttpd: asked for, approved or denied by an approver (never
the requester, never a non-approver), used by token exchange until they end (expiry,
revocation), kept across restarts (kill -9 too), seen by both workers of a supervisor and
by two relayd sharing one redis-server; one audit record per decision.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import Lighttpd
from support.rawhttp import Address, ConnectionClosed
from support.redis import REDIS_SERVER, RedisServer
from support.stack import token_flow
from support.tmpfs import small_tmpfs
from test_e2e_audit import fill
from test_e2e_revocations import ask, relayctl
from test_e2e_tokens import ACCESS, EXCHANGE, user_token
from test_identity_support import AUD, ISS, Key, ec_key, jwks



def grantable(name: str, allowed: str, max_ttl: str, more: str = "") -> str:
    """A flow for group ``allowed`` whose others may ask for grants of up to ``max_ttl``."""
    return f"""
[[flow]]
name = "{name}"
path = "/{name}/"
approval = {{ approvers = {{ groups = ["data-owners"] }}, max_ttl = "{max_ttl}" }}
methods = ["GET"]
allow = {{ groups = ["{allowed}"] }}
max_token_ttl = "10m"
sink = "up"
{more}"""


GRANTS = f"""
[tokens]
issuer = "https://relay.example.test"
grant_request_ttl = "4s"
{grantable("vault", "vault-users", "1h", 'deny = { subjects = ["banned"] }')}
{grantable("brief", "nobody", "2s")}"""


@pytest.fixture(scope="module")
def key() -> Key:
    return ec_key("ec-grants")


def grants_config(workdir: Path, upstream: Upstream, key: Key, server: str = "", tail: str = "") -> str:
    (workdir / "jwks.json").write_bytes(jwks(key))
    return relay_config(workdir, upstream.url, extra=token_flow(workdir / "jwks.json", ISS, AUD, "ES256") + GRANTS,
                        server=f'identity_key = "{workdir / "identity.pem"}"\n{server}') + tail


class Front:
    """relayd (and lighttpd in front of it) under test, with the callers' tokens."""

    def __init__(self, workdir: Path, address: Address, key: Key) -> None:
        self.workdir = workdir
        self.address = address
        self.key = key
        self.alice = user_token(key, "alice", ["analysts"])
        self.olivia = user_token(key, "olivia", ["data-owners"])
        self.bob = user_token(key, "bob", ["analysts"])

    def call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = [("Authorization", "Bearer " + token), ("Content-Type", "application/json")]
        answer = exchange(self.address, request_bytes(method, path, headers, data))
        return answer.status, json.loads(answer.body) if answer.body else None

    def ask_grant(self, flow: str = "vault", ttl: str = "30m", token: str | None = None) -> str:
        status, grant = self.call("POST", "/oauth/grants", token or self.alice,
                                  {"flow": flow, "reason": "incident 7", "ttl": ttl})
        assert status == 202, grant
        assert grant["status"] == "pending" and grant["flow"] == flow
        return str(grant["grant_id"])

    def approve(self, grant_id: str) -> dict[str, Any]:
        status, grant = self.call("POST", f"/oauth/grants/{grant_id}/approve", self.olivia)
        assert status == 200, grant
        return dict(grant)

    def swap(self, flow: str = "vault", token: str | None = None) -> tuple[int, dict[str, Any]]:
        form = f"grant_type={EXCHANGE}&subject_token={token or self.alice}&subject_token_type={ACCESS}&scope=flow:{flow}"
        answer = exchange(self.address, request_bytes(
            "POST", "/oauth/token", [("Content-Type", "application/x-www-form-urlencoded")], form.encode()))
        return answer.status, json.loads(answer.body)

    def use(self, token: str, path: str = "/vault/q") -> int:
        return exchange(self.address, request_bytes("GET", path, [("Authorization", "Bearer " + token)])).status

    def records(self, grant_id: str | None = None, audit: str = "audit.jsonl") -> list[dict[str, Any]]:
        lines = (self.workdir / audit).read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("event") == "grant"
                and (grant_id is None or r["grant_id"] == grant_id)]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, key: Key) -> Iterator[Front]:
    workdir = tmp_path_factory.mktemp("grants")
    relayd = Relayd(workdir, grants_config(workdir, upstream, key))
    lighttpd = Lighttpd(workdir, relayd.unix)
    yield Front(workdir, lighttpd.address, key)
    lighttpd.stop()
    relayd.stop()


def test_metadata_names_the_grants_endpoint(front: Front) -> None:
    meta = json.loads(exchange(front.address, request_bytes("GET", "/.well-known/oauth-authorization-server", [])).body)
    assert meta["relay_grants_endpoint"] == "https://relay.example.test/oauth/grants"


def test_request_approve_exchange_use(front: Front) -> None:
    assert front.swap()[1]["error"] == "invalid_scope"  # no standing access, no grant yet
    grant_id = front.ask_grant()
    assert front.swap()[1]["error"] == "invalid_scope"  # pending is not approved
    assert front.call("GET", f"/oauth/grants/{grant_id}", front.alice)[1]["status"] == "pending"
    assert front.call("GET", f"/oauth/grants/{grant_id}", front.bob)[0] == 404  # not bob's to see
    assert grant_id in [g["grant_id"] for g in front.call("GET", "/oauth/grants", front.olivia)[1]["grants"]]
    assert grant_id not in [g["grant_id"] for g in front.call("GET", "/oauth/grants", front.bob)[1]["grants"]]

    status, refused = front.call("POST", f"/oauth/grants/{grant_id}/approve", front.alice)
    assert (status, refused["error"]) == (403, "self_approval") and refused["request_id"]
    status, refused = front.call("POST", f"/oauth/grants/{grant_id}/approve", front.bob)
    assert (status, refused["error"]) == (403, "not_an_approver")

    approved = front.approve(grant_id)
    assert approved["status"] == "approved" and approved["decided_by"] == {"sub": "olivia", "iss": "idp"}
    assert 1790 <= approved["expires_at"] - time.time() <= 1800
    status, issued = front.swap()
    assert status == 200, issued
    assert 0 < issued["expires_in"] <= 600
    token = issued["access_token"]
    assert front.use(token) == 200
    assert front.use(token, "/secure/q") == 403  # only the flow granted
    assert front.call("POST", f"/oauth/grants/{grant_id}/approve", front.olivia)[0] == 409  # decided already

    records = front.records(grant_id)
    assert [(r["action"], r["decision"], r["reason"]) for r in records] == [
        ("request", "allow", "done"), ("approve", "deny", "self_approval"), ("approve", "deny", "not_an_approver"),
        ("approve", "allow", "done"), ("approve", "deny", "grant_not_pending")]
    assert all(r["subject"] == "alice" and r["issuer"] == "idp" and r["flows"] == ["vault"] for r in records)
    assert records[3]["actor"] == records[3]["approver"] == {"sub": "olivia", "iss": "idp"}
    assert records[0]["detail"] == "incident 7" and records[1]["actor"] == {"sub": "alice", "iss": "idp"}


def test_deny(front: Front) -> None:
    dave = user_token(front.key, "dave", ["analysts"])
    grant_id = front.ask_grant(token=dave)
    status, grant = front.call("POST", f"/oauth/grants/{grant_id}/deny", front.olivia)
    assert (status, grant["status"]) == (200, "denied")
    assert front.call("POST", f"/oauth/grants/{grant_id}/approve", front.olivia)[0] == 409
    assert front.swap(token=dave)[1]["error"] == "invalid_scope"
    record = front.records(grant_id)[1]
    assert (record["action"], record["status"], record["approver"]["sub"]) == ("deny", "denied", "olivia")


def test_bad_requests_are_refused_clearly(front: Front) -> None:
    for body, status, code in (
        ({"flow": "vault", "reason": "x", "ttl": "2h"}, 400, "ttl_too_long"),
        ({"flow": "vault", "reason": "x", "ttl": "soon"}, 400, "invalid_request"),
        ({"flow": "vault"}, 400, "invalid_request"),
        ({"flow": "secure", "reason": "x"}, 400, "not_grantable"),
        ({"reason": "x"}, 400, "invalid_request"),
    ):
        answer = front.call("POST", "/oauth/grants", front.bob, body)
        assert (answer[0], answer[1]["error"]) == (status, code), body
    asking = {"flow": "vault", "reason": "x"}
    insider = user_token(front.key, "ivan", ["vault-users"])
    assert front.call("POST", "/oauth/grants", insider, asking)[1]["error"] == "already_allowed"
    banned = user_token(front.key, "banned", ["analysts"])
    assert front.call("POST", "/oauth/grants", banned, asking)[:1] == (403,)
    assert front.call("POST", "/oauth/grants", "garbage", {"flow": "vault", "reason": "x"})[0] == 401
    assert front.call("GET", "/oauth/grants/nope", front.bob)[0] == 404
    assert front.call("POST", "/oauth/grants/nope/approve", front.olivia)[0] == 404
    assert front.call("PUT", "/oauth/grants", front.bob)[0] == 405


def test_revoke_ends_the_tokens_exchanged_under_it(front: Front) -> None:
    grant_id = front.ask_grant(token=front.bob)
    front.call("POST", f"/oauth/grants/{grant_id}/approve", front.olivia)
    status, issued = front.swap(token=front.bob)
    assert status == 200, issued
    assert front.use(issued["access_token"]) == 200
    reply = ask(front.workdir / "admin.sock", "grants", "revoke", grant_id)
    assert reply["grant"]["status"] == "revoked"
    assert front.use(issued["access_token"]) == 401
    introspect = request_bytes("POST", "/oauth/introspect", [
        ("Authorization", "Bearer " + front.bob), ("Content-Type", "application/x-www-form-urlencoded")],
        f"token={issued['access_token']}".encode())
    assert json.loads(exchange(front.address, introspect).body) == {"active": False}
    assert front.swap(token=front.bob)[1]["error"] == "invalid_scope"
    assert grant_id in {g["grant_id"] for g in ask(front.workdir / "admin.sock", "grants", "list")["grants"]}
    record = front.records(grant_id)[-1]
    assert (record["action"], record["reason"], record["actor"]) == ("revoke", "done", {"sub": "operator", "iss": "relayctl"})
    assert record["subject"] == "bob" and record["approver"]["sub"] == "olivia"
    # the requester may give a grant up too, over HTTP
    grant_id = front.ask_grant(token=front.bob)
    status, grant = front.call("DELETE", f"/oauth/grants/{grant_id}", front.bob)
    assert (status, grant["status"]) == (200, "revoked")
    assert relayctl(front.workdir / "admin.sock", "grants", "approve", grant_id).returncode == 1


def test_grants_and_pending_requests_expire(front: Front) -> None:
    carol = user_token(front.key, "carol", ["analysts"])
    grant_id = front.ask_grant("brief", "2s", carol)
    pending = front.ask_grant("brief", "2s", carol)
    front.approve(grant_id)
    status, issued = front.swap("brief", carol)
    assert status == 200 and issued["expires_in"] <= 2
    assert front.use(issued["access_token"], "/brief/x") == 200
    poll_until(lambda: front.use(issued["access_token"], "/brief/x") == 401 or None, 5, "the grant to end")
    poll_until(lambda: front.records(grant_id)[-1]["action"] == "expire" or None, 5, "the expiry record")
    poll_until(lambda: front.records(pending)[-1]["action"] == "expire" or None, 8, "the pending one to expire")
    assert front.records(grant_id)[-1]["actor"] is None and front.records(pending)[-1]["status"] == "expired"
    assert front.call("POST", f"/oauth/grants/{pending}/approve", front.olivia)[0] == 409


def test_a_grant_survives_a_kill_and_a_revocation_too(tmp_path: Path, upstream: Upstream, key: Key) -> None:
    config = grants_config(tmp_path, upstream, key)
    relayd = Relayd(tmp_path, config)
    try:
        here = Front(tmp_path, relayd.tcp, key)
        grant_id = here.ask_grant()
        here.approve(grant_id)
        relayd.service.send_signal(signal.SIGKILL)
        relayd.service.wait_exit(10)
        relayd = Relayd(tmp_path, config)
        status, issued = here.swap()
        assert status == 200, issued
        ask(tmp_path / "admin.sock", "grants", "revoke", grant_id)
        relayd.stop()
        relayd = Relayd(tmp_path, config)
        assert here.use(issued["access_token"]) == 401
        assert here.call("GET", f"/oauth/grants/{grant_id}", here.alice)[1]["status"] == "revoked"
    finally:
        relayd.stop()


def test_two_workers_see_a_grant_approved_through_either(tmp_path: Path, upstream: Upstream, key: Key) -> None:
    relayd = Relayd(tmp_path, grants_config(tmp_path, upstream, key, server="workers = 2"))
    lighttpd = Lighttpd(tmp_path, relayd.unix)
    try:
        here = Front(tmp_path, lighttpd.address, key)
        grant_id = here.ask_grant()
        here.approve(grant_id)
        for worker in (1, 2):  # each worker holds it (its own admin socket)
            held = {g["grant_id"]: g["status"] for g in ask(tmp_path / f"admin.w{worker}.sock", "grants", "list")["grants"]}
            assert held[grant_id] == "approved"
        assert all(here.swap()[0] == 200 for _ in range(6))
        reply = ask(tmp_path / "admin.sock", "grants", "revoke", grant_id)
        assert reply["grant"]["status"] == "revoked"
        for worker in (1, 2):
            held = {g["grant_id"]: g["status"] for g in ask(tmp_path / f"admin.w{worker}.sock", "grants", "list")["grants"]}
            assert held[grant_id] == "revoked"
        records = here.records(grant_id, "audit.w1.jsonl") + here.records(grant_id, "audit.w2.jsonl")
        assert sorted(r["action"] for r in records if r["reason"] == "done") == ["approve", "request", "revoke"]
    finally:
        lighttpd.stop()
        relayd.stop()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_two_instances_share_grants_through_redis(tmp_path: Path, upstream: Upstream, key: Key) -> None:
    redis = RedisServer(tmp_path)
    relays: list[Relayd] = []
    try:
        for n in range(2):
            home = tmp_path / f"r{n}"
            home.mkdir()
            tail = f'\n[shared]\nredis = "{redis.url}"\nreconnect_max = "0.2s"\n'
            relays.append(Relayd(home, grants_config(home, upstream, key, tail=tail)))
        a, b = (Front(r.config_path.parent, r.tcp, key) for r in relays)
        poll_until(lambda: all(json.loads(relayctl(f.workdir / "admin.sock", "status").stdout)["shared"]["in_sync"]
                               for f in (a, b)) or None, 10, "both in sync with Redis")
        grant_id = a.ask_grant()
        poll_until(lambda: b.call("GET", f"/oauth/grants/{grant_id}", b.olivia)[0] == 200 or None, 2, "b to hold it")
        b.approve(grant_id)
        poll_until(lambda: a.swap()[0] == 200 or None, 2, "a to hold the approval")
        status, issued = b.swap()
        assert status == 200, issued
        assert a.call("POST", f"/oauth/grants/{grant_id}/approve", a.olivia)[0] == 409  # decided on b already
        ask(a.workdir / "admin.sock", "grants", "revoke", grant_id)
        poll_until(lambda: b.use(issued["access_token"]) == 401 or None, 1, "b to refuse the revoked grant")
        stored = redis.client().hgetall("relay:grants")
        assert json.loads(stored[grant_id.encode()].split(b" ", 2)[2])["status"] == "revoked"
        done = [r["action"] for f in (a, b) for r in f.records(grant_id) if r["reason"] == "done"]
        assert sorted(done) == ["approve", "request", "revoke"]  # each change audited once, where it was made
    finally:
        for relayd in relays:
            relayd.stop()
        redis.stop()


def test_approvals_acknowledged_before_a_kill_in_the_middle_of_saving_survive(
        tmp_path: Path, upstream: Upstream, key: Key) -> None:
    """kill -9 amid a run of approvals, each saved before it is answered: relayd starts again
    (the file is whole: the old version or the new), and every approval answered 200 is held."""
    config = grants_config(tmp_path, upstream, key)
    relayd = Relayd(tmp_path, config)
    acknowledged: list[str] = []
    try:
        here = Front(tmp_path, relayd.tcp, key)
        for n in range(40):
            grant_id = here.ask_grant(token=user_token(key, f"caller-{n}", ["analysts"]))
            if n == 20:
                relayd.service.send_signal(signal.SIGKILL)  # the next approvals meet a relayd going down
            try:
                status, _ = here.call("POST", f"/oauth/grants/{grant_id}/approve", here.olivia)
            except (OSError, ConnectionClosed):
                break
            if status != 200:
                break
            acknowledged.append(grant_id)
        relayd.service.wait_exit(10)
        relayd = Relayd(tmp_path, config)
        held = {g["grant_id"]: g["status"] for g in ask(tmp_path / "admin.sock", "grants", "list")["grants"]}
        assert len(acknowledged) >= 20
        assert all(held.get(grant_id) == "approved" for grant_id in acknowledged), held
    finally:
        relayd.stop()


def test_a_full_disk_refuses_grant_changes_and_loses_none(tmp_path: Path, upstream: Upstream, key: Key) -> None:
    """With state_dir full, a change is answered 503 + Retry-After and nothing changed; once
    space is back the same change is made, and it survives a restart."""
    with small_tmpfs(tmp_path / "state", "1m") as state:
        config = grants_config(tmp_path, upstream, key)
        relayd = Relayd(tmp_path, config)
        try:
            here = Front(tmp_path, relayd.tcp, key)
            grant_id = here.ask_grant()
            filler = fill(state)
            status, refusal = here.call("POST", f"/oauth/grants/{grant_id}/approve", here.olivia)
            assert status == 503 and refusal["error"] == "grants_unavailable", refusal
            assert here.call("GET", f"/oauth/grants/{grant_id}", here.alice)[1]["status"] == "pending"
            assert here.swap()[0] == 400  # no grant held: no token for the flow
            filler.unlink()
            assert here.approve(grant_id)["status"] == "approved"
            relayd.stop()
            relayd = Relayd(tmp_path, config)
            assert here.swap()[0] == 200
        finally:
            relayd.stop()
