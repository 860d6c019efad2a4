"""Just-in-time grants through lighttpd: asked for, approved or denied by an approver (never
the requester, never a non-approver), used by token exchange until they end (expiry,
revocation), kept across restarts (kill -9 too), seen by both workers of a supervisor and
by two relayd sharing one redis-server; one audit record per decision. Under faults (kill -9
of relayd, of a worker, of the supervisor; a full state_dir), alone or with workers, no
change answered 200 is lost and none refused is made.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import Relayd, Response, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import Lighttpd
from support.rawhttp import Address, ConnectionClosed
from support.redis import REDIS_SERVER, RedisServer
from support.stack import token_flow
from support.tmpfs import small_tmpfs
from test_e2e_audit import fill
from test_e2e_revocations import ask, relayctl, start, worker_pids
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

    def send(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> Response:
        data = json.dumps(body).encode() if body is not None else b""
        headers = [("Authorization", "Bearer " + token), ("Content-Type", "application/json")]
        return exchange(self.address, request_bytes(method, path, headers, data))

    def call(self, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        answer = self.send(method, path, token, body)
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

    def swapping(self, flow: str = "vault", token: str | None = None) -> Response:
        """The answer to an exchange of the requester's token for one of ``flow``."""
        form = f"grant_type={EXCHANGE}&subject_token={token or self.alice}&subject_token_type={ACCESS}&scope=flow:{flow}"
        return exchange(self.address, request_bytes(
            "POST", "/oauth/token", [("Content-Type", "application/x-www-form-urlencoded")], form.encode()))

    def swap(self, flow: str = "vault", token: str | None = None) -> tuple[int, dict[str, Any]]:
        answer = self.swapping(flow, token)
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


def held_grants(admin_socket: Path) -> dict[str, str]:
    """Each grant's status as the process behind ``admin_socket`` holds it."""
    return {g["grant_id"]: g["status"] for g in ask(admin_socket, "grants", "list")["grants"]}


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
            held = held_grants(tmp_path / f"admin.w{worker}.sock")
            assert held[grant_id] == "approved"
        assert all(here.swap()[0] == 200 for _ in range(6))
        reply = ask(tmp_path / "admin.sock", "grants", "revoke", grant_id)
        assert reply["grant"]["status"] == "revoked"
        for worker in (1, 2):
            held = held_grants(tmp_path / f"admin.w{worker}.sock")
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


# --- under faults ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledged:
    """An approval answered 200: the grant, its requester's token, the process that answered."""

    grant_id: str
    requester: str
    process: str


def process_of(answer: Response) -> str:
    """Which relayd process answered (relayd alone, or one worker): its request ids' prefix."""
    request_id = answer.get("X-Relay-Request-Id")
    assert request_id, f"an answer {answer.status} without a request id"
    return request_id.rpartition("-")[0]


def answered_by(call: Callable[[], Response], processes: int, besides: str = "", tries: int = 60) -> list[Response]:
    """Every answer to ``call()``, made again until ``processes`` relayd processes other than
    ``besides`` have answered (a supervisor's workers each take the connections SO_REUSEPORT
    gives their socket)."""
    answers: list[Response] = []
    seen: set[str] = set()
    while len(seen - {besides}) < processes:
        assert len(answers) < tries, f"{tries} answers, all from the processes {sorted(seen)}"
        answers.append(call())
        seen.add(process_of(answers[-1]))
    return answers


def approvals_amid(here: Front, kill: Callable[[], None], count: int = 40, at: int = 20) -> list[Acknowledged]:
    """A run of ``count`` grants asked for and approved one after the other, and ``kill``
    called while it goes on, once ``at`` approvals were answered 200 (so it meets relayd
    saving a change, or between two): the approvals answered 200. A connection cut or
    refused, or any other answer, acknowledges nothing, and the run goes on (another worker
    may take the next)."""
    acknowledged: list[Acknowledged] = []

    def run() -> None:
        for n in range(count):
            requester = user_token(here.key, f"caller-{n}", ["analysts"])
            try:
                status, grant = here.call("POST", "/oauth/grants", requester, {"flow": "vault", "reason": "incident 7"})
                if status != 202:
                    continue
                answer = here.send("POST", f"/oauth/grants/{grant['grant_id']}/approve", here.olivia)
            except (OSError, ConnectionClosed):
                continue
            if answer.status == 200:
                acknowledged.append(Acknowledged(grant["grant_id"], requester, process_of(answer)))

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run)
        poll_until(lambda: len(acknowledged) >= at or running.done() or None, 30, f"{at} approvals answered")
        kill()
        running.result(60)
    return acknowledged


def assert_held(admin_sockets: list[Path], acknowledged: list[Acknowledged]) -> None:
    for admin_socket in admin_sockets:
        held = held_grants(admin_socket)
        lost = [a.grant_id for a in acknowledged if held.get(a.grant_id) != "approved"]
        assert not lost, f"{admin_socket.name}: approvals answered 200 that are not held: {lost}"


def admin_sockets(workdir: Path, workers: int) -> list[Path]:
    """relayd's admin socket, and with workers each worker's own."""
    return [workdir / "admin.sock", *(workdir / f"admin.w{n}.sock" for n in range(1, workers + 1) if workers > 1)]


def gone(pid: int) -> bool:
    """No such process, or only its exit status left (an orphan's, until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_approvals_acknowledged_before_a_kill_in_the_middle_of_saving_survive(
        tmp_path: Path, upstream: Upstream, key: Key, workers: int) -> None:
    """kill -9 amid a run of approvals, each saved before it is answered (with workers: of the
    supervisor, then of each worker, as a crash leaves it): relayd starts again (the file is
    whole: the old version or the new), and every approval answered 200 is held, by each worker."""
    config = grants_config(tmp_path, upstream, key, server=f"workers = {workers}")
    relayd = start(tmp_path, config)
    pids = [relayd.service.pid, *(worker_pids(tmp_path) if workers > 1 else [])]

    def crash() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a worker told of its supervisor's end may be gone
                os.kill(pid, signal.SIGKILL)

    try:
        acknowledged = approvals_amid(Front(tmp_path, relayd.tcp, key), crash)
        relayd.service.wait_exit(10)
        poll_until(lambda: all(map(gone, pids)) or None, 10, "every process of relayd to be gone")
        saved = json.loads((tmp_path / "state" / "grants.json").read_bytes())["grants"]
        assert {a.grant_id for a in acknowledged} <= {g["grant_id"] for g in saved if g["status"] == "approved"}
        relayd = start(tmp_path, config)
        assert len(acknowledged) >= 20
        assert_held(admin_sockets(tmp_path, workers), acknowledged)
    finally:
        relayd.stop()


def test_a_worker_killed_amid_approvals_loses_none_and_the_other_honours_them(
        tmp_path: Path, upstream: Upstream, key: Key) -> None:
    """kill -9 of one worker amid a run of approvals: the other serves on, the supervisor
    restarts the one killed, and every approval answered 200 is held by both workers and
    honoured (a token exchanged for it) by a process other than the one that approved it."""
    relayd = start(tmp_path, grants_config(tmp_path, upstream, key, server="workers = 2"))
    try:
        here = Front(tmp_path, relayd.tcp, key)
        first = worker_pids(tmp_path)
        acknowledged = approvals_amid(here, lambda: os.kill(first[0], signal.SIGKILL))
        poll_until(lambda: len(now := worker_pids(tmp_path)) == 2 and first[0] not in now or None, 20,
                   "the killed worker to be restarted")
        assert len(acknowledged) >= 20
        assert_held(admin_sockets(tmp_path, 2), acknowledged)
        for approved in acknowledged:
            swaps = answered_by(functools.partial(here.swapping, token=approved.requester), 1, approved.process)
            assert all(swap.status == 200 for swap in swaps), [(swap.status, swap.body) for swap in swaps]
    finally:
        relayd.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_refuses_grant_changes_and_loses_none(
        tmp_path: Path, upstream: Upstream, key: Key, workers: int) -> None:
    """With state_dir full, a change is answered 503 + Retry-After (by each worker) and nothing
    changed anywhere: still pending, no token; once space is back the same change is made,
    and it survives a restart."""
    with small_tmpfs(tmp_path / "state", "1m") as state:
        config = grants_config(tmp_path, upstream, key, server=f"workers = {workers}")
        relayd = start(tmp_path, config)
        try:
            here = Front(tmp_path, relayd.tcp, key)
            grant_id = here.ask_grant()
            filler = fill(state)
            approving = functools.partial(here.send, "POST", f"/oauth/grants/{grant_id}/approve", here.olivia)
            for refusal in answered_by(approving, workers):
                assert (refusal.status, json.loads(refusal.body)["error"]) == (503, "grants_unavailable"), refusal.body
                assert refusal.get("Retry-After") == "1"
            for reading in answered_by(functools.partial(here.send, "GET", f"/oauth/grants/{grant_id}", here.alice),
                                       workers):
                assert json.loads(reading.body)["status"] == "pending"
            for swap in answered_by(here.swapping, workers):  # no grant held: no token for the flow
                assert (swap.status, json.loads(swap.body)["error"]) == (400, "invalid_scope")
            filler.unlink()
            assert here.approve(grant_id)["status"] == "approved"
            relayd.stop()
            relayd = start(tmp_path, config)
            assert all(swap.status == 200 for swap in answered_by(here.swapping, workers))
        finally:
            relayd.stop()
