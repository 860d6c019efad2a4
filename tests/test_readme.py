"""The README's shell examples, run as written against tools/run in a copy of the checkout.

Every ```sh block after the set-up one (tools/run, tools/test) is run in one bash, command
by command, as an operator would paste it, after ``tools/run --no-install`` has started
relayd and lighttpd on the shipped configuration. The copy holds README.md, conf/ and
tools/, with .venv linked to this checkout's; only its ports differ: lighttpd's comes from
RELAY_HTTP_PORT, relayd's TCP listener and the api upstream are moved to free ports in the
copy's conf/relay.toml, and the examples' 127.0.0.1:8080 is pointed at lighttpd's port, so
this runs beside anything else on the machine. .venv/bin is not on the PATH: the commands
must work as printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import free_port, poll_until
from support.procs import ROOT, Service
from support.rawhttp import exchange, request_bytes

README = ROOT / "README.md"
MARK = "@@@ command "

#: what each command must print (a regular expression), keyed by a piece of the command
EXPECTED = {
    "curl -i http://127.0.0.1:8080/healthz": r'(?s)HTTP/1.1 502 .*"error":"sink_failed"',  # relayd's, not lighttpd's
    "tools/devtoken": r"^$",
    "--data-binary @- http://127.0.0.1:8080/ingest/events": r'"records":2|"detail":"line 2: not valid JSON \(',
    "tail -n2 var/data/archive.ndjson": r'^\{"id":1\}\n\{"id":2\}\n$',
    "relayd check": r"configuration ok \(3 flows, 2 sinks, 1 issuers\)",
    " status": r"policy_version: 1",
    " flows --json": r'"name":"ingest"',
    " stats": r"FLOW .* P50_MS +P99_MS\n(.*\n)*ingest +2 ",
    " top -n 3": r"(?s)(relayd pid .*){3}",
    " reload": r"policy_version: 2",
    "relay's own signing keys": r"(?s)own:\nKID +ALG +STATE +CREATED +ACTIVATES +RETIRES +REMOVES\n\S+ +EdDSA +current",
    " keys refresh": r"dev-rs256",
    " keys rotate": r"(?s)rotated: (\S+)\n.*\n\1 +EdDSA +next",
    " revoke jti ID": r"value: ID",
    " cache stats": r"HITS",
    " grants list": r"^\(no grants\)\n$",
    " metrics": r'relay_requests_total\{flow="ingest",reason="bad_request",status="400"\} 1.0',
    " drain": r"^ok\n$",
    "audit verify": r"^ok: \d+ lines in 1 file",
}


def shell_commands(text: str) -> list[str]:
    """The commands of every ```sh block but the first, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    commands: list[str] = []
    for block in blocks[1:]:
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            if not line.rstrip().endswith(("|", "\\")):
                commands.append(pending)
                pending = ""
    return commands


def copy_checkout(tmp_path: Path) -> Path:
    """README.md, conf/ and tools/ in ``tmp_path``, .venv linked, relay.toml on free ports."""
    if not (ROOT / ".venv" / "bin" / "relayd").exists() or shutil.which("lighttpd", path="/usr/sbin:/usr/bin") is None:
        pytest.skip("needs tools/install's .venv and lighttpd")
    copy = tmp_path / "relay"
    copy.mkdir()
    shutil.copy(README, copy / "README.md")
    for part in ("conf", "tools"):
        shutil.copytree(ROOT / part, copy / part)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    config = copy / "conf" / "relay.toml"
    text = config.read_text()
    assert "127.0.0.1:8081" in text and "http://127.0.0.1:9000" in text
    config.write_text(text.replace("127.0.0.1:8081", f"127.0.0.1:{free_port()}")
                      .replace("http://127.0.0.1:9000", f"http://127.0.0.1:{free_port()}"))
    return copy


def tools_run(copy: Path, port: int) -> Service:
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_CONFIG", "NOTIFY_SOCKET")}
    env["RELAY_HTTP_PORT"] = str(port)
    return Service("tools/run", ["bash", str(copy / "tools" / "run"), "--no-install"], copy.parent / "run.log",
                   env=env)


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A copy of the checkout on free ports, served by its tools/run; (directory, lighttpd port)."""
    copy = copy_checkout(tmp_path)
    port = free_port()
    run = tools_run(copy, port)
    try:
        poll_until(lambda: "lighttpd on " in run.log_text() or run.proc.poll() is not None, 60, "tools/run")
        assert run.proc.poll() is None, run.log_tail()
        yield copy, port
        assert run.wait_exit(15) == 0, run.log_tail()  # the README ends with drain: tools/run ends
        log = run.log_text()
        assert " ERROR " not in log and "Traceback" not in log, log
    finally:
        run.stop()


def test_tools_run_starts_no_lighttpd_for_a_relayd_that_cannot_start(tmp_path: Path) -> None:
    copy = copy_checkout(tmp_path)
    with open(copy / "conf" / "relay.toml", "a") as config:
        config.write("\n[[flow]]\nname = \"broken\"\n")  # no path, no sink
    run = tools_run(copy, free_port())
    try:
        assert run.wait_exit(60) != 0
    finally:
        run.stop()
    log = run.log_text()
    assert "configuration rejected" in log and "exited before it was ready" in log, log
    assert "lighttpd" not in log, log


def test_the_readme_commands_work_as_written(checkout: tuple[Path, int]) -> None:
    copy, port = checkout
    commands = shell_commands(README.read_text())
    assert len(commands) >= 16
    script = ["set -euo pipefail"]
    for n, command in enumerate(commands):
        script += [f"echo '{MARK}{n}'", command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")]
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not Path(p).resolve().is_relative_to(ROOT)]
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_CONFIG", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(path)
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=copy, env=env, capture_output=True,
                            text=True, timeout=120)
    outputs = result.stdout.split(MARK)[1:]
    ran = len(outputs)
    assert result.returncode == 0, f"command {ran - 1} failed: {commands[ran - 1]}{result.stderr}"
    assert ran == len(commands)
    for command, output in zip(commands, outputs):
        output = output.split("\n", 1)[1]  # after the marker's own number
        patterns = [pattern for piece, pattern in EXPECTED.items() if piece in command]
        assert patterns, f"no expectation for {command!r}"
        assert re.search(patterns[-1], output), f"{command}printed:\n{output}"


def test_lighttpd_answers_json_while_relayd_is_away(tmp_path: Path) -> None:
    """The shipped lighttpd.conf's own errors have relay's shape, not lighttpd's HTML page."""
    from support import Lighttpd

    front = Lighttpd(tmp_path, str(tmp_path / "nobody.sock"))
    try:
        response = exchange(front.address, request_bytes("GET", "/ingest/x"))
        assert response.status == 503
        assert response.get("Content-Type") == "application/json"
        assert response.get("X-Relay-Request-Id") is None
        assert response.json() == {"error": "relay_unavailable", "request_id": None,
                                   "detail": "relayd is not accepting connections (not running, or starting)"}
        refused = exchange(front.address, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert refused.status == 400 and refused.json()["error"] == "bad_request"
    finally:
        front.stop()
