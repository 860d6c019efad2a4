"""relayd's life as an operator sees it: `check`, SIGTERM with a request in flight,
SIGHUP with a good and a broken config, and a stale Unix socket left at start."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from support import (RawConnection, Relayd, Upstream, exchange, poll_until, relay_check, relay_config,
                     request_bytes)
from support.rawhttp import can_connect
from support.stack import EXTRA_FLOW
UNKNOWN_KEY = 'colour = "red"'


def line_of(text: str, needle: str) -> int:
    """1-based number of the line holding ``needle``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def status_of(relayd: Relayd, target: str) -> int:
    return exchange(relayd.tcp, request_bytes("GET", target)).status


def test_check_accepts_a_good_config(workdir: Path, upstream: Upstream) -> None:
    path = workdir / "good.toml"
    path.write_text(relay_config(workdir, upstream.url, extra=EXTRA_FLOW))
    result = relay_check(path)
    assert result.returncode == 0, result.stderr


def test_check_names_an_unknown_flow_key_with_file_and_line(workdir: Path, upstream: Upstream) -> None:
    text = relay_config(workdir, upstream.url, extra=EXTRA_FLOW + UNKNOWN_KEY + "\n")
    path = workdir / "unknown-key.toml"
    path.write_text(text)
    result = relay_check(path)
    assert result.returncode != 0
    problems = [line for line in result.stderr.splitlines() if "colour" in line]
    assert len(problems) == 1, result.stderr
    assert problems[0].startswith(f"{path}:{line_of(text, UNKNOWN_KEY)}: "), problems[0]
    assert "flow" in problems[0]


def test_check_reports_every_problem_at_once(workdir: Path, upstream: Upstream) -> None:
    text = relay_config(workdir, upstream.url, extra=EXTRA_FLOW.replace('sink = "up"', 'sink = "nosuchsink"'))
    text = text.replace("[server]\n", "[server]\nlisten_backlog_typo = 5\n")
    path = workdir / "two-problems.toml"
    path.write_text(text)
    result = relay_check(path)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    for needle in ("listen_backlog_typo", "nosuchsink"):
        found = [line for line in lines if needle in line]
        assert len(found) == 1 and found[0].startswith(f"{path}:"), result.stderr


@pytest.mark.parametrize("text", ["[server\nlisten = [", "[[flow]]\nname = 'x'\nname = 'y'\n"],
                         ids=["unclosed-table", "repeated-key"])
def test_check_rejects_invalid_toml(workdir: Path, text: str) -> None:
    path = workdir / "broken.toml"
    path.write_text(text)
    result = relay_check(path)
    assert result.returncode != 0
    assert str(path) in result.stderr


def test_check_rejects_a_missing_file(workdir: Path) -> None:
    result = relay_check(workdir / "absent.toml")
    assert result.returncode != 0
    assert "absent.toml" in result.stderr


def test_sigterm_finishes_the_request_in_flight(relayd: Relayd, upstream: Upstream) -> None:
    mark = upstream.mark()
    with RawConnection(relayd.tcp) as conn:
        conn.send(request_bytes("GET", "/data/in-flight?delay=2&body=1000"))
        upstream.wait_for(lambda r: r["target"].startswith("/data/in-flight"), mark)
        relayd.service.send_signal(signal.SIGTERM)
        poll_until(lambda: not can_connect(relayd.tcp), 1.5, "relayd to stop accepting")
        response = conn.read_response()
    assert response.status == 200, str(response)
    assert len(response.body) == 1000
    assert relayd.service.wait_exit(10) == 0


def test_sighup_with_a_new_config_serves_the_new_flow(relayd: Relayd, upstream: Upstream,
                                                      workdir: Path) -> None:
    assert status_of(relayd, "/extra/x") == 404
    relayd.config_path.write_text(relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1],
                                               extra=EXTRA_FLOW))
    relayd.service.send_signal(signal.SIGHUP)
    poll_until(lambda: status_of(relayd, "/extra/x") == 200, 10, "the new flow to serve")
    assert status_of(relayd, "/data/x") == 200


def test_sighup_with_a_broken_config_keeps_the_old_one(relayd: Relayd, upstream: Upstream,
                                                       workdir: Path) -> None:
    log_before = relayd.service.log_text()
    broken = relay_config(workdir, upstream.url, tcp_port=relayd.tcp[1], extra=EXTRA_FLOW + UNKNOWN_KEY)
    relayd.config_path.write_text(broken)
    relayd.service.send_signal(signal.SIGHUP)
    poll_until(lambda: "colour" in relayd.service.log_text()[len(log_before):], 10,
               "relayd to log the broken config")
    assert relayd.service.proc.poll() is None, "relayd exited on a broken config"
    assert status_of(relayd, "/data/x") == 200
    assert status_of(relayd, "/extra/x") == 404  # nothing of the broken config applied
    # and the next good config still goes in
    relayd.config_path.write_text(broken.replace(UNKNOWN_KEY, ""))
    relayd.service.send_signal(signal.SIGHUP)
    poll_until(lambda: status_of(relayd, "/extra/x") == 200, 10, "the fixed config to serve")


def test_a_stale_unix_socket_is_replaced(workdir: Path, upstream: Upstream) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(workdir / "relay.sock"))
    stale.close()  # leaves the socket file behind with nobody listening
    assert not can_connect(str(workdir / "relay.sock"))
    relayd = Relayd(workdir, relay_config(workdir, upstream.url))
    try:
        response = exchange(relayd.unix, request_bytes("GET", "/data/after-stale"))
        assert response.status == 200, str(response)
    finally:
        relayd.stop()


def test_sigterm_when_idle_exits_zero_promptly(relayd: Relayd) -> None:
    started = time.monotonic()
    relayd.service.send_signal(signal.SIGTERM)
    assert relayd.service.wait_exit(10) == 0
    assert time.monotonic() - started < 3
