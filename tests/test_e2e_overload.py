"""Overload shedding: past server.max_in_flight (or max_connections), relayd answers 503
with Retry-After at once, before reading the body or reaching a sink, instead of queueing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path


from support import RawConnection, Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, child_env


def limited(workdir: Path, upstream: Upstream, limits: str) -> Relayd:
    return Relayd(workdir, relay_config(workdir, upstream.url).replace("[server]\n", f"[server]\n{limits}\n", 1))


def test_requests_past_max_in_flight_get_503_at_once(tmp_path: Path, upstream: Upstream) -> None:
    relayd = limited(tmp_path, upstream, "max_in_flight = 2")
    try:
        slow: list[int] = []
        mark = upstream.mark()
        threads = [threading.Thread(target=lambda n=n: slow.append(
            exchange(relayd.tcp, request_bytes("GET", f"/data/slow{n}?delay=2")).status)) for n in range(2)]
        for thread in threads:
            thread.start()
        poll_until(lambda: len([r for r in upstream.since(mark) if "/data/slow" in r["target"]]) == 2 or None,
                   10, "two slow requests in flight")
        started = time.monotonic()
        shed = exchange(relayd.tcp, request_bytes("POST", "/data/shed", body=b"x" * 1000))
        assert time.monotonic() - started < 1.0
        assert shed.status == 503, str(shed)
        assert shed.get("Retry-After") == "1"
        assert shed.json()["error"] == "overloaded"
        for thread in threads:
            thread.join(10)
        assert slow == [200, 200]
        assert [r for r in upstream.since(mark) if r["target"] == "/data/shed"] == []
        assert exchange(relayd.tcp, request_bytes("GET", "/data/after")).status == 200
    finally:
        relayd.stop()


def open_connections(relayd: Relayd) -> int:
    """Connections relayd counts now (its readiness probes linger briefly)."""
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(relayd.config_path.parent / "admin.sock"),
                             "--json", "status"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
    return int(json.loads(result.stdout)["connections"])


def test_connections_past_max_connections_get_503(tmp_path: Path, upstream: Upstream) -> None:
    relayd = limited(tmp_path, upstream, "max_connections = 2")
    try:
        poll_until(lambda: open_connections(relayd) == 0 or None, 5, "the readiness probes to close")
        held = [RawConnection(relayd.tcp) for _ in range(2)]
        try:
            poll_until(lambda: open_connections(relayd) == 2 or None, 5, "both connections to be admitted")
            poll_until(lambda: exchange(relayd.tcp, request_bytes("GET", "/data/x")).status == 503 or None, 5,
                       "the third connection to be refused")
        finally:
            for conn in held:
                conn.close()
        poll_until(lambda: exchange(relayd.tcp, request_bytes("GET", "/data/y")).status == 200 or None, 5,
                   "a connection to be admitted again")
    finally:
        relayd.stop()
