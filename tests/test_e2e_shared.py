"""Revocations shared by three relayd through one redis-server: a revoke on one is refused
by all within a second; with Redis killed (SIGKILL) or stopped, the revoking instance
refuses at once, says the others do not know yet, and they learn it once Redis is back.

A shared rate limit spans the three: two clients, one through lighttpd and one going
from instance to instance, get no more than the limit allows between them; with Redis
killed mid-run the fail-closed instances answer 503 and the fail-open one counts alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import Address, RawConnection, Relayd, Response, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, Lighttpd, child_env
from support.redis import REDIS_SERVER, RedisServer
from support.stack import token_flow
from test_e2e_refusals import audited
from test_e2e_revocations import status
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

INSTANCES = 3
#: how soon every instance must refuse what one revoked
PROPAGATION = 1.0
#: the instance whose token flow has shared_state = "fail-open" (the others fail closed)
FAIL_OPEN = 2
#: the shared limit of the flow /limited/: a rate a test run outpaces many times over
RATE, BURST = 10, 10
LIMITED = f"""
[[flow]]
name = "limited"
path = "/limited/"
methods = ["GET"]
auth = "none"
sink = "up"
rate_limit = {{ per = "flow", rate = "{RATE}/s", burst = {BURST}, mode = "shared" }}
"""
#: admitted beyond the limit's own count: a request whose interval began as the run ended
TOLERANCE = 1


@pytest.fixture(scope="module")
def key() -> Key:
    return ec_key("ec-shared")


@pytest.fixture(scope="module")
def tokens(key: Key) -> dict[str, bytes]:
    return {sub: key.token(good_claims(sub=sub, jti=f"jti-{sub}", groups=["writers"], exp=good_claims()["iat"] + 3600))
            for sub in ("wanda", "bob", "carol")}


@pytest.fixture
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    running = RedisServer(workdir)
    yield running
    running.stop()


def shared_config(workdir: Path, upstream: Upstream, key: Key, redis_url: str, fail_open: bool) -> str:
    jwks_file = workdir / "jwks.json"
    jwks_file.write_bytes(jwks(key))
    text = relay_config(workdir, upstream.url, extra=token_flow(jwks_file, ISS, AUD, "ES256") + LIMITED)
    if fail_open:
        for path in ("/secure/", "/limited/"):
            text = text.replace(f'path = "{path}"\n', f'path = "{path}"\nshared_state = "fail-open"\n', 1)
    return text + f'\n[shared]\nredis = "{redis_url}"\nreconnect_max = "0.2s"\n'


@pytest.fixture
def relays(workdir: Path, upstream: Upstream, key: Key, redis_server: RedisServer) -> Iterator[list[Relayd]]:
    running: list[Relayd] = []
    try:
        for n in range(INSTANCES):
            home = workdir / f"relay{n}"
            home.mkdir()
            running.append(Relayd(home, shared_config(home, upstream, key, redis_server.url, n == FAIL_OPEN)))
        assert all(shared_status(relayd)["in_sync"] for relayd in running)  # it listens once in sync
        yield running
    finally:
        for relayd in running:
            relayd.stop()


def relayctl(relayd: Relayd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(relayd.config_path.parent / "admin.sock"),
                           "--json", *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())


def shared_status(relayd: Relayd) -> dict[str, object]:
    result = relayctl(relayd, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    shared = json.loads(result.stdout)["shared"]
    assert isinstance(shared, dict)
    return shared


def refused_everywhere(relays: list[Relayd], token: bytes) -> bool:
    return all(status(relayd.tcp, token) == 401 for relayd in relays)


def test_a_revoke_on_one_instance_is_refused_by_all_within_a_second(relays: list[Relayd],
                                                                    tokens: dict[str, bytes]) -> None:
    assert [status(relayd.tcp, tokens["wanda"]) for relayd in relays] == [200] * INSTANCES
    result = relayctl(relays[0], "revoke", "sub", "wanda", "--ttl", "1h")
    assert result.returncode == 0, result.stdout + result.stderr
    revoked = time.monotonic()
    poll_until(lambda: refused_everywhere(relays, tokens["wanda"]) or None, PROPAGATION, "every instance to refuse")
    assert time.monotonic() - revoked < PROPAGATION
    assert [status(relayd.tcp, tokens["bob"]) for relayd in relays] == [200] * INSTANCES


@pytest.mark.parametrize("outage", ["kill", "stop"])
def test_a_revoke_while_redis_is_away_holds_here_and_reaches_the_others_when_it_returns(
        relays: list[Relayd], tokens: dict[str, bytes], redis_server: RedisServer, outage: str) -> None:
    relayctl(relays[0], "revoke", "sub", "carol", "--ttl", "1h")
    poll_until(lambda: refused_everywhere(relays, tokens["carol"]) or None, 5, "carol refused everywhere")
    redis_server.kill() if outage == "kill" else redis_server.stop()
    for relayd in relays:
        poll_until(lambda: not shared_status(relayd)["in_sync"] or None, 10, "relayd to see Redis gone")

    # fail-closed: not sure what is revoked elsewhere, so no token is served
    refused = exchange(relays[0].tcp, request_bytes("GET", "/secure/x", [("Authorization", "Bearer " + tokens["bob"].decode())]))
    assert refused.status == 503 and refused.get("Retry-After") == "1", refused
    assert b"shared_state_unavailable" in refused.body
    # fail-open: served on what this instance knows, and counted
    assert status(relays[FAIL_OPEN].tcp, tokens["bob"]) == 200
    assert status(relays[FAIL_OPEN].tcp, tokens["carol"]) == 401
    assert shared_status(relays[FAIL_OPEN])["unsynced_requests"] == 2

    result = relayctl(relays[1], "revoke", "sub", "wanda", "--ttl", "1h")
    assert result.returncode != 0 and "not yet on the other instances" in result.stdout + result.stderr
    assert status(relays[FAIL_OPEN].tcp, tokens["wanda"]) == 200  # it cannot know yet

    redis_server.restart()  # empty: nothing was saved, every instance pushes back what it holds
    poll_until(lambda: refused_everywhere(relays, tokens["wanda"]) or None, 10, "wanda refused everywhere")
    assert all(shared_status(relayd)["in_sync"] for relayd in relays)
    assert [status(relayd.tcp, tokens["bob"]) for relayd in relays] == [200] * INSTANCES


def test_through_one_lighttpd_a_revoke_on_one_instance_is_refused_by_all(
        relays: list[Relayd], tokens: dict[str, bytes], workdir: Path) -> None:
    sockets = " ".join(relayd.unix for relayd in relays)
    front = Lighttpd(workdir, "", conf=ROOT / "conf" / "lighttpd-balance.conf", extra_env={"RELAY_SOCKETS": sockets})
    try:
        served = [status(front.address, tokens["wanda"], f"/secure/{n}") for n in range(3 * INSTANCES)]
        assert served == [200] * (3 * INSTANCES)
        assert all(shared_status(relayd)["in_sync"] for relayd in relays)
        result = relayctl(relays[1], "revoke", "sub", "wanda", "--ttl", "1h")
        assert result.returncode == 0, result.stdout + result.stderr
        poll_until(lambda: refused_everywhere(relays, tokens["wanda"]) or None, PROPAGATION, "every instance to refuse")
        through = [status(front.address, tokens["wanda"], f"/secure/{n}") for n in range(3 * INSTANCES)]
        assert through == [401] * (3 * INSTANCES)

        relays[0].stop()  # lighttpd skips a dead relayd: the others answer
        poll_until(lambda: all(status(front.address, tokens["bob"], f"/secure/{n}") == 200 for n in range(INSTANCES))
                   or None, 10, "lighttpd to serve from the live relayd only")
        assert status(front.address, tokens["wanda"]) == 401
    finally:
        front.stop()


def limited_metric(relayd: Relayd, name: str, **labels: str) -> float:
    """One series of the flow /limited/'s limit, from the instance's metrics."""
    result = relayctl(relayd, "metrics")
    assert result.returncode == 0, result.stdout + result.stderr
    wanted = ",".join(f'{key}="{value}"' for key, value in {"flow": "limited", "limit": "flow", "mode": "shared",
                                                            **labels}.items())
    found = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", json.loads(result.stdout)["text"], re.M)
    return float(found[1]) if found else 0.0


class Client(threading.Thread):
    """Sends GET /limited/N to ``targets`` in turn until stopped, keeping a connection to
    each alive (bounded: a few sockets, not one per request)."""

    def __init__(self, targets: list[Address]) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.answers: list[tuple[float, Address, Response]] = []
        self.done = threading.Event()

    def run(self) -> None:
        connections: dict[int, RawConnection] = {}
        try:
            n = 0
            while not self.done.is_set():
                i = n % len(self.targets)
                conn = connections.get(i) or connections.setdefault(i, RawConnection(self.targets[i], 10))
                sent = time.monotonic()
                conn.send(request_bytes("GET", f"/limited/{n}"))
                response = conn.read_response()
                self.answers.append((sent, self.targets[i], response))
                if (response.get("Connection") or "").lower() == "close":
                    connections.pop(i).close()
                n += 1
        finally:
            for conn in connections.values():
                conn.close()


def drive(clients: list[Client], seconds: float, midway: Callable[[], None] | None = None) -> float:
    """Run ``clients`` together for ``seconds`` (calling ``midway`` halfway); how long they ran."""
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        if midway is not None:
            threading.Event().wait(seconds / 2)  # the run's own length, not a synchronisation
            midway()
        threading.Event().wait(max(0.0, started + seconds - time.monotonic()))
    finally:
        for client in clients:
            client.done.set()
        for client in clients:
            client.join(10)
    return time.monotonic() - started


def test_through_one_lighttpd_a_shared_rate_limit_spans_every_instance(relays: list[Relayd], workdir: Path) -> None:
    sockets = " ".join(relayd.unix for relayd in relays)
    front = Lighttpd(workdir, "", conf=ROOT / "conf" / "lighttpd-balance.conf", extra_env={"RELAY_SOCKETS": sockets})
    try:
        through_lighttpd, instance_to_instance = Client([front.address]), Client([r.tcp for r in relays])
        took = drive([through_lighttpd, instance_to_instance], 1.5)
    finally:
        front.stop()
    answers = [response for client in (through_lighttpd, instance_to_instance) for _, _, response in client.answers]
    statuses = [response.status for response in answers]
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429} and len(answers) > 3 * (BURST + RATE * took), statuses
    # one count over both clients and all three instances: each alone would have admitted a burst
    assert BURST <= admitted <= BURST + RATE * took + TOLERANCE, (admitted, took)
    refused = next(response for response in answers if response.status == 429)
    assert refused.get("Retry-After") == "1" and refused.get("RateLimit-Policy") == f'"flow";q={RATE};w=1'
    per_instance = [limited_metric(relayd, "relay_rate_limit_requests_total", result="admitted") for relayd in relays]
    assert sum(per_instance) == admitted and sum(n > 0 for n in per_instance) >= 2, per_instance


def secure(relayd: Relayd, token: bytes) -> Response:
    return exchange(relayd.tcp, request_bytes("GET", "/secure/x", [("Authorization", "Bearer " + token.decode())]))


def test_a_relayd_started_beside_redis_is_in_sync_before_it_serves(
        workdir: Path, upstream: Upstream, key: Key, redis_server: RedisServer, tokens: dict[str, bytes]) -> None:
    relayd = Relayd(workdir, shared_config(workdir, upstream, key, redis_server.url, fail_open=False))
    try:
        first = secure(relayd, tokens["bob"])  # the very first request, fail-closed
        assert first.status == 200, first
        assert shared_status(relayd)["in_sync"] is True
    finally:
        relayd.stop()


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_a_relayd_started_while_redis_is_away_serves_fail_closed_503_until_it_is_back(
        workdir: Path, upstream: Upstream, key: Key, redis_server: RedisServer, tokens: dict[str, bytes],
        outage: str) -> None:
    redis_server.stop() if outage == "stopped" else redis_server.pause()
    config = shared_config(workdir, upstream, key, redis_server.url, fail_open=False) + 'timeout = "0.5s"\n'
    started = time.monotonic()
    relayd = Relayd(workdir, config)
    try:
        assert time.monotonic() - started < 10  # a Redis that does not answer does not hold the start
        refused = secure(relayd, tokens["bob"])
        assert refused.status == 503 and b"shared_state_unavailable" in refused.body, refused
        assert "starting out of sync with Redis" in relayd.service.log_text()
        redis_server.restart() if outage == "stopped" else redis_server.resume()
        poll_until(lambda: secure(relayd, tokens["bob"]).status == 200 or None, 10, "relayd to reach Redis")
    finally:
        relayd.stop()


def test_with_redis_killed_mid_run_fail_closed_answers_503_and_fail_open_counts_alone(
        relays: list[Relayd], redis_server: RedisServer) -> None:
    closed, opened = Client([relays[0].tcp]), Client([relays[FAIL_OPEN].tcp])
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.monotonic())
        redis_server.kill()

    started = time.monotonic()
    took = drive([closed, opened], 1.5, midway=kill)
    answers = closed.answers + opened.answers
    assert killed and all(response.status in (200, 429, 503) for _, _, response in answers)
    before = [response.status for at, _, response in answers if at < killed[0]]
    admitted = sum(response.status == 200 for _, _, response in answers)
    # the request each client had in flight at the kill may have been counted here instead
    in_flight = 2
    assert BURST <= before.count(200) <= BURST + RATE * (killed[0] - started) + TOLERANCE + in_flight
    # after the kill each instance answers on what it knows: the fail-closed one admits
    # nothing, the fail-open one counts the limit alone, from a fresh burst
    assert admitted - before.count(200) <= BURST + RATE * (started + took - killed[0]) + TOLERANCE
    unavailable = [response for _, _, response in closed.answers if response.status == 503]
    assert unavailable and closed.answers[-1][2].status == 503, [r.status for _, _, r in closed.answers[-20:]]
    assert unavailable[0].get("Retry-After") == "1" and unavailable[0].json()["error"] == "rate_limit_unavailable"
    assert "'flow' cannot be checked" in unavailable[0].json()["detail"]
    record = audited(relays[0].config_path.parent, str(unavailable[0].get("X-Relay-Request-Id")))
    assert (record["status"], record["reason"], record["flow"]) == (503, "rate_limit_unavailable", "limited")
    assert "shared rate limit 'flow'" in record["detail"]
    assert not any(response.status == 503 for _, _, response in opened.answers)
    assert limited_metric(relays[0], "relay_rate_limit_errors_total") >= len(unavailable)
    assert limited_metric(relays[FAIL_OPEN], "relay_rate_limit_errors_total") > 0

    redis_server.restart()  # back: the instances count in Redis again
    poll_until(lambda: exchange(relays[0].tcp, request_bytes("GET", "/limited/back")).status == 200 or None,
               10, "the fail-closed instance to admit again")
