"""Operating a running relayd through its admin socket with relayctl: status, flows,
transactional reload (also under load), metrics, drain, and verifying its audit log."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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


def test_options_go_before_or_after_the_command(relayd: Relayd, workdir: Path) -> None:
    sock = str(workdir / "admin.sock")
    for argv in (["--json", "--socket", sock, "flows"], ["flows", "--json", "--socket", sock],
                 ["--socket", sock, "flows", "--json"], ["-c", str(relayd.config_path), "flows", "--json"]):
        result = relayctl(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert json.loads(result.stdout)["ok"] is True, argv
    # an option given after the command wins over the same one before it
    result = relayctl("--socket", str(workdir / "nothing.sock"), "status", "--socket", sock)
    assert result.returncode == 0 and f"pid: {relayd.service.pid}" in result.stdout


BROKEN_FILES = {
    # two problems tomllib accepts: every one must be listed
    "invalid": ('[bogus]\nx = 1\n', ['unknown key \'bogus\'', 'unknown sink \'ghost\'']),
    # not even TOML: the admin socket is found by scanning [server]
    "not toml": ('[[flow]]\nname = "oops\n', ['TOML syntax']),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_reload_of_a_broken_file_reaches_relayd_and_lists_every_problem(
        kind: str, relayd: Relayd, upstream: Upstream, workdir: Path) -> None:
    tail, expected = BROKEN_FILES[kind]
    extra = EXTRA_FLOW.replace('sink = "up"', 'sink = "ghost"') + tail
    relayd.config_path.write_text(relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1], extra=extra))
    result = relayctl("-c", str(relayd.config_path), "reload")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("relayctl: reload: configuration rejected\nproblems:\n"), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert status_of(relayd, "/data/x") == 200  # the running policy keeps serving
    assert "policy_version: 1" in relayctl("-c", str(relayd.config_path), "status").stdout


def test_stats_show_latency_quantiles(relayd: Relayd, workdir: Path) -> None:
    for n in range(20):
        assert status_of(relayd, f"/data/timed-{n}") == 200
    result = admin(workdir, "--json", "stats")
    assert result.returncode == 0, result.stderr
    data = next(row for row in json.loads(result.stdout)["flows"] if row["flow"] == "data")
    assert data["requests"] == 20
    assert 0 < data["p50_ms"] <= data["p99_ms"] < 1000
    header = admin(workdir, "stats").stdout.splitlines()[0].split()
    assert header[-3:] == ["MEAN_MS", "P50_MS", "P99_MS"]


def test_top_shows_rates_and_sink_errors_while_traffic_flows(relayd: Relayd, workdir: Path) -> None:
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status_of(relayd, "/data/busy")
            status_of(relayd, "/down/busy")  # nothing listens behind the "down" flow: 502 sink_failed

    assert status_of(relayd, "/data/first") == 200  # traffic is flowing before top starts
    worker = threading.Thread(target=load)
    worker.start()
    try:
        result = admin(workdir, "top", "-n", "2", "--interval", "0.3")
        scripted = admin(workdir, "top", "--once", "--json", "--interval", "0.3")
    finally:
        stop.set()
        worker.join()
    assert result.returncode == 0, result.stderr
    frames = result.stdout.split("relayd pid ")[1:]  # piped: frames follow one another, no ANSI codes
    assert len(frames) == 2 and "\x1b" not in result.stdout, result.stdout
    for text in frames:
        lines = text.strip("\n").splitlines()
        assert lines[0].startswith(f"{relayd.service.pid}  up "), text
        columns = lines[2].split()
        rows = {line.split()[0]: dict(zip(columns, line.split())) for line in lines[3:]}
        assert float(rows["data"]["REQ/S"]) > 0 and rows["data"]["P99_MS"] != "-", text
        assert float(rows["down"]["SINK_ERR/S"]) > 0 and float(rows["data"]["SINK_ERR/S"]) == 0, text
    assert scripted.returncode == 0, scripted.stderr
    interval = json.loads(scripted.stdout)  # one line: the interval's stats rows
    assert 0 < interval["seconds"] < 5
    down = next(row for row in interval["flows"] if row["flow"] == "down")
    assert down["requests"] == down["sink_errors"] > 0


def test_top_ends_quietly_on_ctrl_c(relayd: Relayd, workdir: Path) -> None:
    argv = [sys.executable, "-m", "relay.ctl", "--socket", str(workdir / "admin.sock"), "top", "--interval", "0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=child_env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the first frame is out
        assert first.startswith("relayd pid "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and err == "", err


def test_drain_stops_relayd_quietly(relayd: Relayd, workdir: Path) -> None:
    result = admin(workdir, "drain")
    assert result.returncode == 0, result.stderr
    assert relayd.service.wait_exit(10) == 0
    log = relayd.service.log_text()
    assert "drain requested" in log and "relayd stopped" in log
    assert " ERROR " not in log and "Traceback" not in log, log


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
