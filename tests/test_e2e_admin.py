"""Operating a running relayd through its admin socket with relayctl: status, flows,
transactional reload (also under load), metrics, drain, and verifying its audit log."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path


from support import Relayd, Upstream, exchange, free_port, poll_until, relay_check, relay_config, request_bytes
from support.procs import ROOT, child_env
from support.stack import EXTRA_FLOW


def relayctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.ctl", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=child_env())


def admin(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return relayctl("--socket", str(workdir / "admin.sock"), *args)


def status_of(relayd: Relayd, target: str) -> int:
    return exchange(relayd.tcp, request_bytes("GET", target)).status


def test_the_admin_socket_is_private(relayd: Relayd, workdir: Path) -> None:
    mode = os.stat(workdir / "admin.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_status_and_flows(relayd: Relayd, workdir: Path) -> None:
    status = admin(workdir, "status")
    assert status.returncode == 0, status.stderr
    assert f"pid: {relayd.service.pid}" in status.stdout
    assert "policy_version: 1" in status.stdout

    flows = admin(workdir, "--json", "flows")
    assert flows.returncode == 0, flows.stderr
    reply = json.loads(flows.stdout)
    assert reply["ok"] is True
    assert {row["name"] for row in reply["flows"]} >= {"data", "small"}


def test_reload_serves_a_new_flow(relayd: Relayd, upstream: Upstream, workdir: Path) -> None:
    assert status_of(relayd, "/extra/x") == 404
    relayd.config_path.write_text(relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1], extra=EXTRA_FLOW))
    result = admin(workdir, "reload")
    assert result.returncode == 0, result.stderr
    assert status_of(relayd, "/extra/x") == 200
    assert "policy_version: 2" in admin(workdir, "status").stdout


def test_reload_naming_an_unknown_sink_changes_nothing(relayd: Relayd, upstream: Upstream,
                                                       workdir: Path) -> None:
    bad = EXTRA_FLOW.replace('sink = "up"', 'sink = "ghost"')
    relayd.config_path.write_text(relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1], extra=bad))
    result = admin(workdir, "reload")
    assert result.returncode == 1
    assert "ghost" in result.stderr
    assert status_of(relayd, "/extra/x") == 404
    assert status_of(relayd, "/data/x") == 200
    assert "policy_version: 1" in admin(workdir, "status").stdout


def test_ten_reloads_under_load_fail_no_request(relayd: Relayd, upstream: Upstream, workdir: Path) -> None:
    relayd.config_path.write_text(relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1], extra=EXTRA_FLOW))
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(status_of(relayd, "/data/under-load"))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        poll_until(lambda: len(statuses) >= 20 or None, 10, "load to start")
        for _ in range(10):
            result = admin(workdir, "reload")
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert "policy_version: 11" in admin(workdir, "status").stdout
    assert len(statuses) > 20 and set(statuses) == {200}, sorted(set(statuses))


def test_metrics_are_prometheus_text(relayd: Relayd, workdir: Path) -> None:
    assert status_of(relayd, "/data/counted") == 200
    result = admin(workdir, "metrics")
    assert result.returncode == 0, result.stderr
    assert 'relay_requests_total{flow="data",reason="relayed",status="200"}' in result.stdout
    assert "relay_connections" in result.stdout


def test_log_level_refuses_a_bad_level(relayd: Relayd, workdir: Path) -> None:
    assert admin(workdir, "log-level", "debug").returncode == 0
    bad = admin(workdir, "log-level", "chatty")
    assert bad.returncode != 0 and "level" in bad.stderr


def test_drain_stops_relayd(relayd: Relayd, workdir: Path) -> None:
    result = admin(workdir, "drain")
    assert result.returncode == 0, result.stderr
    assert relayd.service.wait_exit(10) == 0


def test_the_audit_log_verifies_and_tampering_is_found(relayd: Relayd, workdir: Path) -> None:
    for n in range(5):
        assert status_of(relayd, f"/data/audited-{n}") == 200
    assert status_of(relayd, "/nowhere") == 404
    relayd.stop()  # flushes the audit log
    log = workdir / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    assert all("Authorization" not in line for line in lines)
    assert relayctl("audit", "verify", str(log)).returncode == 0

    changed = lines[1].replace("audited-1", "audited-X")
    assert changed != lines[1]
    log.write_text("".join([lines[0], changed, *lines[2:]]))
    tampered = relayctl("audit", "verify", str(log))
    assert tampered.returncode == 1
    assert f"{log}:2" in tampered.stderr, tampered.stderr


def test_metrics_over_http_on_loopback(workdir: Path, upstream: Upstream) -> None:
    port = free_port()
    text = relay_config(workdir, upstream.url).replace(
        "[server]\n", f'[server]\nmetrics_listen = "127.0.0.1:{port}"\n', 1)
    relayd = Relayd(workdir, text)
    try:
        assert status_of(relayd, "/data/scraped") == 200
        scrape = exchange(("127.0.0.1", port), request_bytes("GET", "/metrics"))
        assert scrape.status == 200
        assert (scrape.get("Content-Type") or "").startswith("text/plain; version=0.0.4")
        assert b'relay_requests_total{flow="data",reason="relayed",status="200"}' in scrape.body
        assert exchange(("127.0.0.1", port), request_bytes("GET", "/data/x")).status == 404
    finally:
        relayd.stop()


def test_metrics_listen_must_be_loopback(workdir: Path, upstream: Upstream) -> None:
    path = workdir / "exposed.toml"
    path.write_text(relay_config(workdir, upstream.url).replace(
        "[server]\n", '[server]\nmetrics_listen = "0.0.0.0:9464"\n', 1))
    result = relay_check(path)
    assert result.returncode != 0 and "metrics_listen" in result.stderr and "loopback" in result.stderr
