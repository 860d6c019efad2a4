"""Revocations with server.workers = 2: they reach every worker, cached tokens included,
survive a worker killed with SIGKILL (also after the configuration file moved the state
directory) and a whole relayd killed or stopped and started again (one process too), and
fail closed when the state file is corrupt or cannot be written.

Every request loop is bounded in count; after a ``revoke`` is acknowledged it must see
no success at all for the revoked identity, while another identity keeps being served.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Relayd, Service, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, child_env
from support.rawhttp import Address
from support.stack import token_flow
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

LOOP = 60  # requests per loop: with two workers, 2**-60 that one of them sees none


@pytest.fixture(scope="module")
def key() -> Key:
    return ec_key("ec-revocations")


@pytest.fixture(scope="module")
def tokens(key: Key) -> dict[str, bytes]:
    return {sub: key.token(good_claims(sub=sub, jti=f"jti-{sub}", groups=["writers"], exp=good_claims()["iat"] + 3600))
            for sub in ("wanda", "bob")}


def config_text(workdir: Path, upstream: Upstream, key: Key, workers: int = 2) -> str:
    jwks_file = workdir / "jwks.json"
    jwks_file.write_bytes(jwks(key))
    text = relay_config(workdir, upstream.url, extra=token_flow(jwks_file, ISS, AUD, "ES256"))
    return text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)


def start(workdir: Path, text: str) -> Relayd:
    relayd = Relayd(workdir, text)
    if "workers = 2" in text:
        poll_until(lambda: len(set(worker_pids(workdir))) == 2 or None, 30, "both workers to be up")
    return relayd


@pytest.fixture
def relayd(workdir: Path, upstream: Upstream, key: Key) -> Iterator[Relayd]:
    running = start(workdir, config_text(workdir, upstream, key))
    yield running
    running.stop()


def relayctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(socket_path), "--json", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env())


def ask(socket_path: Path, *args: str) -> dict[str, Any]:
    result = relayctl(socket_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    reply = json.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


def worker_pids(workdir: Path) -> list[int]:
    """Both workers' pids; none while the supervisor or a worker cannot answer (starting)."""
    result = relayctl(workdir / "admin.sock", "status")
    if result.returncode != 0:
        return []
    return [int(w["pid"]) for w in json.loads(result.stdout)["workers"]]


def status(address: Address, token: bytes, target: str = "/secure/x") -> int:
    return exchange(address, request_bytes("GET", target, [("Authorization", "Bearer " + token.decode())])).status


def statuses(relayd: Relayd, token: bytes, count: int = LOOP) -> list[int]:
    """``count`` requests, each on a new connection, over TCP (SO_REUSEPORT spreads them
    over both workers) and the shared Unix socket in turn."""
    return [status(relayd.tcp if n % 2 else relayd.unix, token, f"/secure/{n}") for n in range(count)]


def revoke_wanda(workdir: Path) -> dict[str, Any]:
    reply = ask(workdir / "admin.sock", "revoke", "sub", "wanda", "--ttl", "1h")
    assert reply["ok"] is True
    return reply


def worker_stats(workdir: Path, worker: int) -> dict[str, int]:
    """The secure flow's counters in one worker, asked on its own admin socket."""
    rows = ask(workdir / f"admin.w{worker}.sock", "stats")["flows"]
    return next((row for row in rows if row["flow"] == "secure"), {"requests": 0, "ok": 0, "client_errors": 0})


def test_a_revoke_reaches_both_workers_and_their_cached_tokens(relayd: Relayd, workdir: Path,
                                                               tokens: dict[str, bytes]) -> None:
    assert statuses(relayd, tokens["wanda"]) == [200] * LOOP
    for worker in (1, 2):  # each worker has wanda's token cached: its refusals below are cache hits
        cache = ask(workdir / f"admin.w{worker}.sock", "cache", "stats")["cache"]
        assert isinstance(cache, dict) and cache["hits"] >= 1, (worker, cache)

    reply = revoke_wanda(workdir)
    assert [w["state"] for w in reply["workers"]] == ["revoked", "revoked"]
    assert statuses(relayd, tokens["wanda"]).count(200) == 0
    assert statuses(relayd, tokens["bob"]) == [200] * LOOP
    for worker in (1, 2):
        assert worker_stats(workdir, worker)["client_errors"] >= 1, worker
    saved = json.loads((workdir / "state" / "revocations.json").read_text())
    assert [(e["kind"], e["value"]) for e in saved["entries"]] == [("sub", "wanda")]


@pytest.mark.parametrize("moved", [False, True], ids=["same-config", "state-dir-edited"])
def test_a_worker_killed_after_the_revoke_refuses_from_its_first_request(relayd: Relayd, workdir: Path,
                                                                        tokens: dict[str, bytes], moved: bool) -> None:
    assert statuses(relayd, tokens["wanda"], 10) == [200] * 10
    revoke_wanda(workdir)
    if moved:  # the restarted worker reads this file; it must still use the supervisor's state
        text = relayd.config_path.read_text()
        relayd.config_path.write_text(text.replace(str(workdir / "state"), str(workdir / "elsewhere")))
    before = worker_pids(workdir)
    os.kill(before[0], signal.SIGKILL)
    # sent at once: the requests that reach the restarted worker's socket wait for it,
    # so the first requests it ever serves are among these
    assert statuses(relayd, tokens["wanda"]).count(200) == 0
    after = poll_until(lambda: pids if (pids := worker_pids(workdir)) and pids[0] != before[0] else None, 30,
                       "worker 1 to be restarted")
    assert after[1] == before[1]
    assert statuses(relayd, tokens["wanda"]).count(200) == 0
    assert worker_stats(workdir, 1)["client_errors"] >= 1  # the new worker 1 did refuse some
    assert worker_stats(workdir, 1)["ok"] == 0
    assert statuses(relayd, tokens["bob"]) == [200] * LOOP


def test_both_workers_killed_come_back_refusing(relayd: Relayd, workdir: Path, tokens: dict[str, bytes]) -> None:
    revoke_wanda(workdir)
    before = worker_pids(workdir)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    assert status(relayd.tcp, tokens["wanda"]) == 401  # served by a new worker: the old ones are gone
    assert statuses(relayd, tokens["wanda"]).count(200) == 0
    poll_until(lambda: len(set(worker_pids(workdir)) - set(before)) == 2 or None, 30, "both workers to be restarted")
    assert statuses(relayd, tokens["bob"]) == [200] * LOOP


@pytest.mark.parametrize("workers", [2, 1])
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_revocations_survive_a_restart_of_relayd(workdir: Path, upstream: Upstream, key: Key,
                                                 tokens: dict[str, bytes], how: str, workers: int) -> None:
    text = config_text(workdir, upstream, key, workers)
    relayd = start(workdir, text)
    try:
        revoke_wanda(workdir)
        children = worker_pids(workdir) if workers > 1 else []
        if how == "SIGKILL":  # the machine lost power, as far as relayd can tell
            for pid in [relayd.service.pid, *children]:
                os.kill(pid, signal.SIGKILL)
        else:
            relayd.service.send_signal(signal.SIGTERM)
        assert relayd.service.wait_exit(30) == (-signal.SIGKILL if how == "SIGKILL" else 0)
        poll_until(lambda: not any(alive(pid) for pid in children) or None, 30, "the old workers to exit")
    finally:
        relayd.stop()
    again = Relayd(workdir, text, name="relayd-again")
    try:
        assert status(again.tcp, tokens["wanda"]) == 401  # its very first request
        assert statuses(again, tokens["wanda"]).count(200) == 0
        assert statuses(again, tokens["bob"]) == [200] * LOOP
    finally:
        again.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_exit_when_their_supervisor_is_killed(relayd: Relayd, workdir: Path) -> None:
    workers = worker_pids(workdir)
    os.kill(relayd.service.pid, signal.SIGKILL)
    relayd.service.wait_exit(10)
    # orphans would keep serving on the old sockets, out of reach of any later revoke
    poll_until(lambda: not any(alive(pid) for pid in workers) or None, 30, "the orphaned workers to exit")


def test_a_worker_that_does_not_answer_is_named(relayd: Relayd, workdir: Path, tokens: dict[str, bytes]) -> None:
    stuck = worker_pids(workdir)[1]
    os.kill(stuck, signal.SIGSTOP)
    try:
        result = relayctl(workdir / "admin.sock", "revoke", "sub", "wanda")
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and "worker 2: did not answer" in reply["error"]
    assert [w["state"] for w in reply["workers"]][0] == "revoked"
    # saved all the same, and the stuck worker is told again by the next revoke
    assert "wanda" in (workdir / "state" / "revocations.json").read_text()
    assert revoke_wanda(workdir)["ok"] is True
    assert statuses(relayd, tokens["wanda"]).count(200) == 0


def test_a_ttl_over_the_cap_is_refused_and_nothing_saved(relayd: Relayd, workdir: Path,
                                                        tokens: dict[str, bytes]) -> None:
    result = relayctl(workdir / "admin.sock", "revoke", "sub", "wanda", "--ttl", "367d")
    assert result.returncode == 1
    assert "366 days" in json.loads(result.stdout)["error"]
    assert not (workdir / "state" / "revocations.json").exists()
    assert ask(workdir / "admin.sock", "revoke", "sub", "wanda", "--ttl", "366d")["ok"] is True
    assert statuses(relayd, tokens["wanda"], 10).count(200) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_corrupt_state_file_stops_relayd_from_starting(workdir: Path, upstream: Upstream, key: Key,
                                                         workers: int) -> None:
    state = workdir / "state"
    state.mkdir()
    (state / "revocations.json").write_text('{"format": "relay-revocations", "version": 1, "entries": [{"ki')
    config = workdir / "relay.toml"
    config.write_text(config_text(workdir, upstream, key, workers))
    service = Service("relayd", [sys.executable, "-m", "relay", "-c", str(config)], workdir / "relayd.log",
                      env=child_env())
    try:
        assert service.wait_exit(30) == 1
    finally:
        service.stop()
    log = service.log_text()
    assert f"revocations file {state / 'revocations.json'} is corrupt" in log
    assert "move it aside" in log


def test_one_process_keeps_a_revocation_it_could_not_save(workdir: Path, upstream: Upstream, key: Key,
                                                          tokens: dict[str, bytes]) -> None:
    relayd = start(workdir, config_text(workdir, upstream, key, workers=1))
    try:
        assert status(relayd.tcp, tokens["wanda"]) == 200
        (workdir / "state").rmdir()  # nowhere to save now
        result = relayctl(workdir / "admin.sock", "revoke", "sub", "wanda")
        assert result.returncode == 1
        assert "not saved" in json.loads(result.stdout)["error"]
        assert statuses(relayd, tokens["wanda"], 10).count(200) == 0  # failing closed: it holds all the same
        assert status(relayd.tcp, tokens["bob"]) == 200
    finally:
        relayd.stop()
