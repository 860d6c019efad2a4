"""server.workers = 2: a supervisor and two worker processes sharing the listen sockets.

Requests are served by both workers; a worker killed with SIGKILL is restarted while
requests keep flowing; the admin socket answers for all of them; SIGTERM stops them all
(exit 0); each worker's audit file is a hash chain of its own; and systemd hears
READY=1 and STOPPING=1 through NOTIFY_SOCKET.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support import Relayd, Service, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, child_env, listen_addresses


def two_workers(workdir: Path, upstream: Upstream) -> str:
    return relay_config(workdir, upstream.url).replace("[server]\n", "[server]\nworkers = 2\n", 1)


def admin(workdir: Path, *args: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(workdir / "admin.sock"), "--json",
                             *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


def worker_pids(workdir: Path) -> list[int]:
    workers = admin(workdir, "status")["workers"]
    assert isinstance(workers, list)
    return [int(w["pid"]) for w in workers]


def test_two_workers_serve_restart_and_stop(workdir: Path, upstream: Upstream) -> None:
    relayd = Relayd(workdir, two_workers(workdir, upstream))
    try:
        poll_until(lambda: os.path.exists(workdir / "admin.sock") or None, 15, "the supervisor's admin socket")
        first = worker_pids(workdir)
        assert len(set(first)) == 2 and relayd.service.pid not in first
        for n in range(20):
            assert exchange(relayd.tcp, request_bytes("GET", f"/data/w{n}")).status == 200
            assert exchange(relayd.unix, request_bytes("GET", f"/data/u{n}")).status == 200

        os.kill(first[0], signal.SIGKILL)
        # the other worker keeps serving while the first comes back
        for n in range(10):
            assert exchange(relayd.tcp, request_bytes("GET", f"/data/during{n}")).status == 200
        poll_until(lambda: (pids := worker_pids(workdir))[0] != first[0] and pids[0] > 0 or None, 15,
                   "the killed worker to be restarted")
        status = admin(workdir, "status")
        assert [w["restarts"] for w in status["workers"]] == [1, 0]  # type: ignore[union-attr, index]
        poll_until(lambda: exchange(relayd.tcp, request_bytes("GET", "/data/after")).status == 200 or None, 15,
                   "serving after the restart")
        stats = admin(workdir, "stats")
        data = [row for row in stats["flows"] if row["flow"] == "data"]  # type: ignore[union-attr, index]
        assert data and data[0]["requests"] >= 1

        relayd.service.send_signal(signal.SIGTERM)
        assert relayd.service.wait_exit(30) == 0
        for pid in worker_pids_gone(first):
            pytest.fail(f"worker {pid} outlived the supervisor")
    finally:
        relayd.stop()
    chains = [workdir / "audit.w1.jsonl", workdir / "audit.w2.jsonl"]
    for chain in chains:
        assert chain.exists()
        verify = subprocess.run([sys.executable, "-m", "relay.ctl", "audit", "verify", str(chain)],
                                capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
        assert verify.returncode == 0, verify.stderr


def worker_pids_gone(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_hears_ready_and_stopping(workdir: Path, upstream: Upstream, workers: int) -> None:
    notify_path = str(workdir / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(20)
    text = relay_config(workdir, upstream.url).replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    config = workdir / "relay.toml"
    config.write_text(text)
    service = Service("relayd", [sys.executable, "-m", "relay", "-c", str(config)], workdir / "relayd.log",
                      env=child_env() | {"NOTIFY_SOCKET": notify_path})
    try:
        assert listener.recv(256) == b"READY=1"
        service.wait_ready(listen_addresses(text))
        assert exchange(listen_addresses(text)[0], request_bytes("GET", "/data/notified")).status == 200
        service.send_signal(signal.SIGTERM)
        assert listener.recv(256) == b"STOPPING=1"
        assert service.wait_exit(30) == 0
    finally:
        service.stop()
        listener.close()


def test_top_and_drain_with_two_workers(workdir: Path, upstream: Upstream) -> None:
    relayd = Relayd(workdir, two_workers(workdir, upstream))
    try:
        poll_until(lambda: os.path.exists(workdir / "admin.sock") or None, 15, "the supervisor's admin socket")
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                exchange(relayd.tcp, request_bytes("GET", "/data/top"))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            top = subprocess.run([sys.executable, "-m", "relay.ctl", "top", "--once", "--interval", "0.3",
                                  "--socket", str(workdir / "admin.sock")],
                                 capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
        finally:
            stop.set()
            worker.join()
        assert top.returncode == 0, top.stderr
        assert top.stdout.startswith(f"relayd pid {relayd.service.pid}  up "), top.stdout  # the supervisor's
        data = next(line.split() for line in top.stdout.splitlines() if line.startswith("data "))
        assert float(data[1]) > 0, top.stdout  # requests per second, summed over both workers

        assert admin(workdir, "drain") == {"ok": True}
        assert relayd.service.wait_exit(30) == 0
        log = relayd.service.log_text()
        assert " ERROR " not in log and "Traceback" not in log, log
    finally:
        relayd.stop()


CACHED = """
[[flow]]
name = "cached"
path = "/cached/"
methods = ["GET"]
auth = "none"
sink = "up"
cache = { scope = "public", ttl = "1h" }
"""


def test_a_purge_reaches_every_workers_cache(workdir: Path, upstream: Upstream) -> None:
    relayd = Relayd(workdir, two_workers(workdir, upstream) + CACHED)
    try:
        poll_until(lambda: os.path.exists(workdir / "admin.sock") or None, 15, "the supervisor's admin socket")

        def entries() -> float:
            text = admin(workdir, "metrics")["text"]
            assert isinstance(text, str)
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith('relay_response_cache_entries{flow="cached"}'))

        def both_workers_hold_it() -> bool | None:
            # each new connection goes to either worker; each worker keeps its own copy
            assert exchange(relayd.tcp, request_bytes("GET", "/cached/page")).status == 200
            return entries() == 2 or None

        poll_until(both_workers_hold_it, 15, "both workers to cache the page")
        assert admin(workdir, "cache", "purge", "--flow", "cached")["purged"] == 2
        assert entries() == 0
        after = exchange(relayd.tcp, request_bytes("GET", "/cached/page"))
        assert after.status == 200 and after.get("X-Relay-Cache") == "miss"
    finally:
        relayd.stop()
