"""relayctl against a real AdminServer, and its local audit check."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_admin import AdminThread
from test_audit_verify import write_log

from relay.admin import (
    AdminReply, AdminRequest, CacheStatsReply, CommandError, CommandTable, FlowsReply, KeysReply, MetricsReply,
    ReloadReply, RevokeReply, StatsReply, StatusReply,
)
from relay.admin_client import admin_socket_of
from relay.ctl import format_reply, relayctl_main
from relay.ctl_top import frame
from relay.metrics import Metrics, flow_stats
from relay.units import parse_duration

NOW = 1700000000.0


def sample_metrics() -> Metrics:
    metrics = Metrics()
    metrics.request_done("orders", 200, "relayed", 1200, 80, 0.004)
    metrics.request_done("orders", 502, "sink_failed", 300, 60, 0.020)
    metrics.request_done("ingest", 201, "relayed", 5000, 40, 0.002)
    return metrics


def ctl_commands() -> tuple[CommandTable, list[AdminRequest]]:
    """Handlers shaped like relayd's, and the list of requests they received."""
    table = CommandTable()
    seen: list[AdminRequest] = []
    metrics = sample_metrics()
    replies: dict[str, AdminReply] = {
        "status": StatusReply(ok=True, version="0.1.0", pid=4242, uptime_s=12.5, policy_version=3,
                              connections=7, draining=False),
        "flows": FlowsReply(ok=True, flows=[
            {"name": "orders", "path": "/orders/", "methods": ["POST", "GET"], "sink": "api", "tee": ["archive"]},
            {"name": "health", "path": "/healthz", "methods": ["GET"], "sink": "api", "tee": []},
        ]),
        "stats": StatsReply(ok=True, flows=flow_stats(metrics.snapshot())),
        "keys": KeysReply(ok=True, keys=[{"issuer": "dev", "source": "file", "kids": ["k1", "k2"],
                                          "fetches": 3, "failures": 0, "last_error": None}]),
        "keys rotate": KeysReply(ok=True, rotated="k3", own=[
            {"kid": "k2", "alg": "EdDSA", "state": "current", "created": NOW, "activates": NOW, "retires": NOW + 301,
             "removes": NOW + 1201},
            {"kid": "k3", "alg": "EdDSA", "state": "next", "created": NOW, "activates": NOW + 301, "retires": None,
             "removes": None},
        ]),
        "cache stats": CacheStatsReply(ok=True, cache={"size": 10, "capacity": 4096, "hits": 90, "misses": 10}),
        "cache purge": AdminReply(ok=True),
        "metrics": MetricsReply(ok=True, text=metrics.render().decode()),
        "reload": ReloadReply(ok=False, error="configuration rejected",
                              problems=["relay.toml: flow[0].sink: unknown sink 'nope' (line 3)"]),
    }

    def fixed(reply: AdminReply) -> Any:
        async def handler(request: AdminRequest) -> AdminReply:
            seen.append(request)
            return reply
        return handler

    for name, reply in replies.items():
        table.register(name, fixed(reply))

    async def revoke(request: AdminRequest) -> AdminReply:
        seen.append(request)
        try:
            ttl = parse_duration(request.get("ttl", "1h"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return RevokeReply(ok=True, kind=request["kind"], value=request["value"], until=NOW + ttl)

    async def hang(request: AdminRequest) -> AdminReply:
        await asyncio.Event().wait()  # never answers; cancelled when the server closes
        raise AssertionError("unreachable")

    table.register("revoke", revoke)
    table.register("drain", hang)
    return table, seen


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AdminThread, list[AdminRequest]]]:
    table, seen = ctl_commands()
    admin = AdminThread(tmp_path / "admin.sock", table)
    yield admin, seen
    admin.close()


def relayctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run relayctl in-process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        relayctl_main(list(argv))
    out, err = capsys.readouterr()
    assert isinstance(exited.value.code, int)
    return exited.value.code, out, err


def test_status_prints_key_value_lines(served: tuple[AdminThread, list[AdminRequest]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    admin, seen = served
    status, out, err = relayctl(capsys, "--socket", str(admin.path), "status")
    assert (status, err) == (0, "")
    assert out.splitlines() == ["version: 0.1.0", "pid: 4242", "uptime_s: 12.5", "policy_version: 3",
                                "connections: 7", "draining: no"]
    assert seen == [{"cmd": "status", "args": []}]


def test_flows_prints_a_table(served: tuple[AdminThread, list[AdminRequest]],
                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = relayctl(capsys, "--socket", str(served[0].path), "flows")
    assert status == 0
    assert out.splitlines() == [
        "NAME    PATH      METHODS   SINK  TEE",
        "orders  /orders/  POST,GET  api   archive",
        "health  /healthz  GET       api   -",
    ]


def test_stats_table_right_aligns_numbers(served: tuple[AdminThread, list[AdminRequest]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = relayctl(capsys, "--socket", str(served[0].path), "stats")
    assert status == 0
    header, ingest, orders = out.splitlines()
    assert header.split() == ["FLOW", "REQUESTS", "OK", "CLIENT_ERRORS", "SERVER_ERRORS", "DENIED", "SINK_ERRORS",
                              "BYTES_IN", "BYTES_OUT", "MEAN_MS", "P50_MS", "P99_MS"]
    assert ingest.split() == ["ingest", "1", "1", "0", "0", "0", "0", "5000", "40", "2", "1.75", "2.485"]
    assert orders.split() == ["orders", "2", "1", "0", "1", "0", "1", "1500", "140", "12", "5", "24.7"]
    assert len(header) == len(ingest) == len(orders)  # columns line up


def test_keys_and_cache_stats_tables(served: tuple[AdminThread, list[AdminRequest]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = str(served[0].path)
    status, out, _ = relayctl(capsys, "--socket", path, "keys")
    assert status == 0
    assert out.splitlines()[1].split() == ["dev", "file", "k1,k2", "3", "0", "-"]
    status, out, _ = relayctl(capsys, "--socket", path, "cache", "stats")
    assert status == 0
    assert out.splitlines() == ["SIZE  CAPACITY  HITS  MISSES", "  10      4096    90      10"]
    assert served[1][-1] == {"cmd": "cache stats", "args": []}


def test_keys_rotate_shows_relays_own_keys_with_their_times(served: tuple[AdminThread, list[AdminRequest]],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = str(served[0].path)
    status, out, _ = relayctl(capsys, "--socket", path, "keys", "rotate", "--now")
    assert status == 0 and served[1][-1] == {"cmd": "keys rotate", "now": True, "args": []}
    lines = out.splitlines()
    assert lines[:3] == ["rotated: k3", "", "own:"]
    assert lines[3].split() == ["KID", "ALG", "STATE", "CREATED", "ACTIVATES", "RETIRES", "REMOVES"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW + 301))
    assert lines[5].startswith("k3") and "next" in lines[5] and when in lines[5] and lines[5].endswith("-")
    status, _, err = relayctl(capsys, "--socket", path, "keys", "--now")
    assert status == 2 and "--now goes with 'keys rotate' only" in err


def test_json_round_trips(served: tuple[AdminThread, list[AdminRequest]],
                          capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = relayctl(capsys, "--socket", str(served[0].path), "--json", "status")
    assert status == 0
    assert json.loads(out) == {"ok": True, "version": "0.1.0", "pid": 4242, "uptime_s": 12.5,
                               "policy_version": 3, "connections": 7, "draining": False}


def test_metrics_prints_prometheus_text_as_is(served: tuple[AdminThread, list[AdminRequest]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = relayctl(capsys, "--socket", str(served[0].path), "metrics")
    assert status == 0
    assert out == sample_metrics().render().decode()
    names = {family.name for family in text_string_to_metric_families(out)}
    assert "relay_requests" in names


def test_revoke_sends_kind_value_and_ttl(served: tuple[AdminThread, list[AdminRequest]],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    admin, seen = served
    status, out, _ = relayctl(capsys, "--socket", str(admin.path), "--json", "revoke", "jti", "abc-123",
                              "--ttl", "2h")
    assert status == 0
    assert seen[-1] == {"cmd": "revoke", "kind": "jti", "value": "abc-123", "ttl": "2h", "args": []}
    assert json.loads(out)["until"] == NOW + 7200
    status, out, _ = relayctl(capsys, "--socket", str(admin.path), "revoke", "sub", "alice")
    assert status == 0 and "ttl" not in seen[-1]
    assert "value: alice" in out.splitlines()


def test_bad_ttl_is_a_usage_error(served: tuple[AdminThread, list[AdminRequest]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = relayctl(capsys, "--socket", str(served[0].path), "revoke", "jti", "x", "--ttl", "soon")
    assert status == 2 and "cannot read duration 'soon'" in err
    assert served[1] == []  # nothing was sent


def test_failed_command_exits_1_with_the_error_on_stderr(served: tuple[AdminThread, list[AdminRequest]],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = str(served[0].path)
    status, out, err = relayctl(capsys, "--socket", path, "reload")
    assert (status, out) == (1, "")
    assert err.splitlines() == ["relayctl: reload: configuration rejected", "problems:",
                                "  relay.toml: flow[0].sink: unknown sink 'nope' (line 3)"]
    status, out, err = relayctl(capsys, "--socket", path, "--json", "reload")
    assert status == 1 and json.loads(out)["ok"] is False and "configuration rejected" in err
    status, _, err = relayctl(capsys, "--socket", path, "log-level", "debug")  # no handler installed
    assert status == 1 and "command 'log-level' is not available" in err


def test_no_reply_in_time_exits_2(served: tuple[AdminThread, list[AdminRequest]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = relayctl(capsys, "--socket", str(served[0].path), "--timeout", "0.2", "drain")
    assert status == 2 and "no reply" in err


def test_unreachable_socket_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = relayctl(capsys, "--socket", str(tmp_path / "nothing.sock"), "status")
    assert (status, out) == (2, "")
    assert err.startswith(f"relayctl: cannot connect to the admin socket {tmp_path / 'nothing.sock'}:")


def test_socket_from_config(served: tuple[AdminThread, list[AdminRequest]], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nadmin_socket = "{served[0].path}"\n')
    status, out, _ = relayctl(capsys, "-c", str(config), "status")
    assert status == 0 and "version: 0.1.0" in out

    config.write_text('[server]\nlisten = ["127.0.0.1:0"]\n')
    status, _, err = relayctl(capsys, "-c", str(config), "status")
    assert status == 2 and "configures no server.admin_socket" in err

    status, _, err = relayctl(capsys, "-c", str(tmp_path / "missing.toml"), "status")
    assert status == 2 and "cannot read" in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = relayctl(capsys, "frobnicate")
    assert status == 2 and "invalid choice: 'frobnicate'" in err


def test_audit_verify_runs_locally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = asyncio.new_event_loop()
    try:
        path = tmp_path / "audit.jsonl"
        write_log(path, loop, 4).close()
    finally:
        loop.close()
    status, out, _ = relayctl(capsys, "audit", "verify", str(path))
    assert status == 0 and out.startswith("ok: 4 lines in 1 file(s), 1 chain start(s); head ")

    lines = path.read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    status, out, err = relayctl(capsys, "audit", "verify", str(path))
    assert (status, out) == (1, "")
    assert err.startswith(f"relayctl: audit chain broken at {path}:2: reordered:")
    status, out, _ = relayctl(capsys, "--json", "audit", "verify", str(path))
    assert status == 1 and json.loads(out)["problem"]["line"] == 2

    status, _, err = relayctl(capsys, "audit", "verify", str(tmp_path / "gone.jsonl"))
    assert status == 2 and "cannot read" in err


def test_format_reply_of_an_empty_reply_and_empty_table() -> None:
    assert format_reply({"ok": True}) == "ok"
    assert format_reply({"ok": True, "flows": []}) == "(no flows)"
    assert format_reply({"ok": True, "policy_version": 2, "flows": []}) == "policy_version: 2\n\nflows:\n(no flows)"


@pytest.mark.parametrize("text, expected", [
    ('[server]\nadmin_socket = "run/a.sock"\n[[flow]]\nname = 3\n', "run/a.sock"),  # valid TOML, invalid config
    ('[server]\nadmin_socket = "run/\\u0061.sock"  # note\n[[flow]]\nname = "unclosed\n', "run/a.sock"),
    ("[server]\nlisten = [\n  admin_socket = 'run/b.sock'\n", "run/b.sock"),  # scanned: not TOML
    ('[sink.x]\nadmin_socket = "no"\n[server]\nlisten = "\n', None),  # only [server]'s counts
    ('[server]\nlisten = ["127.0.0.1:1"]\n', None),
])
def test_the_admin_socket_is_read_from_a_file_relayd_would_refuse(tmp_path: Path, text: str,
                                                                  expected: str | None) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(text)
    assert admin_socket_of(str(config)) == expected


def test_top_frame_shows_what_changed_in_the_interval() -> None:
    metrics = Metrics()
    metrics.request_done("orders", 200, "relayed", 1024, 2048, 0.004)
    metrics.request_done("quiet", 200, "relayed", 0, 0, 0.001)
    before = metrics.snapshot()
    for _ in range(8):
        metrics.request_done("orders", 200, "relayed", 1024, 2048, 0.004)
    metrics.request_done("orders", 403, "forbidden", 0, 60, 0.001)
    metrics.request_done("orders", 504, "sink_timeout", 512, 60, 2.0)
    lines = frame({"pid": 42, "uptime_s": 90061.0, "policy_version": 2, "connections": 3, "in_flight": 1},
                  metrics.snapshot(), before, 2.0, ["orders", "quiet"])
    assert lines[0].startswith("relayd pid 42  up 1d01:01:01  policy v2  connections 3  in flight 1")
    assert lines[2].split() == ["FLOW", "REQ/S", "OK/S", "4XX/S", "5XX/S", "DENIED/S", "SINK_ERR/S", "IN_KIB/S",
                                "OUT_KIB/S", "P50_MS", "P99_MS"]
    # 10 requests in 2 s: 8 ok, a denial, a sink timeout; 8.5 KiB in, 16.1 KiB out
    assert lines[3].split() == ["orders", "5.0", "4.0", "0.5", "0.5", "0.5", "0.5", "4.2", "8.1", "3.75", "2350.00"]
    assert lines[4].split() == ["quiet", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0", "-", "-"]
    assert len({len(line) for line in lines[2:]}) == 1  # columns line up
