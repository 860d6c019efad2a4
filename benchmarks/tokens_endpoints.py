"""What relay's token endpoints cost next to a plain request with a cached token.

Three scenarios against one relayd (TCP, no lighttpd, so the figures are relayd's own):
``cached`` a GET with one token to a flow relayed to discard.py; ``exchange`` a token
exchange (subject and actor tokens cached, one Ed25519 signature, two audit records);
``introspect`` an introspection of relay's own token. Runs are interleaved, each
scenario ``--runs`` times; medians of req/s and relayd CPU µs per request are printed.

    python -m benchmarks.tokens_endpoints [--seconds 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from benchmarks.loadgen import Load, run_wrk
from benchmarks.procs import Proc
from benchmarks.systems import ROOT

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _devtoken(sub: str, groups: str) -> str:
    argv = [sys.executable, str(ROOT / "tools" / "devtoken"), "--sub", sub, "--groups", groups, "--alg", "ES256"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()


def _config(work: Path, port: int, discard: int) -> str:
    return f"""\
[server]
listen = ["127.0.0.1:{port}"]
identity_key = "{work / 'identity.pem'}"
state_dir = "{work / 'state'}"
[audit]
path = "{work / 'audit.jsonl'}"
commit = "batched"
[[issuer]]
name = "dev"
issuer = "https://idp.example.test/"
audiences = ["relay"]
jwks_file = "{ROOT / 'conf' / 'keys' / 'dev-jwks.json'}"
[tokens]
issuer = "https://relay.bench.test"
[sink.discard]
type = "http"
url = "http://127.0.0.1:{discard}"
[[flow]]
name = "plain"
path = "/plain/"
methods = ["GET"]
allow = {{ groups = ["readers"] }}
max_token_ttl = "10m"
sink = "discard"
"""


def _post(url: str, form: dict[str, str], token: str | None = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, urlencode(form).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        document: dict[str, object] = json.loads(answer.read())
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-tokens-") as tmp:
        work = Path(tmp)
        port, discard_port = _port(), _port()
        (work / "relay.toml").write_text(_config(work, port, discard_port))
        discard = Proc("discard", [sys.executable, "-m", "benchmarks.discard", "--tcp", f"127.0.0.1:{discard_port}",
                        "--unix", str(work / "discard.sock")],
                       work / "discard.log", cpus=None, cwd=ROOT)
        relayd = Proc("relayd", [sys.executable, "-m", "relay", "-c", str(work / "relay.toml")],
                      work / "relayd.log", cpus=None, cwd=ROOT)
        try:
            discard.wait_ready([("127.0.0.1", discard_port)])
            relayd.wait_ready([("127.0.0.1", port)])
            base = f"http://127.0.0.1:{port}"
            user, agent = _devtoken("alice", "readers"), _devtoken("agent-7", "agents")
            swap = {"grant_type": EXCHANGE, "subject_token": user, "subject_token_type": ACCESS,
                    "actor_token": agent, "actor_token_type": ACCESS, "scope": "flow:plain"}
            issued = str(_post(base + "/oauth/token", swap)["access_token"])
            assert _post(base + "/oauth/introspect", {"token": issued}, agent)["active"] is True
            files = {"user": user, "exchange": urlencode(swap), "introspect": urlencode({"token": issued}),
                     "agent": agent}
            for name, text in files.items():
                (work / name).write_text(text + "\n")
            scenarios = {
                "cached": (base + "/plain/x", Load("token.lua", (str(work / "user"),))),
                "exchange": (base + "/oauth/token", Load("form.lua", (str(work / "exchange"),))),
                "introspect": (base + "/oauth/introspect",
                               Load("form.lua", (str(work / "introspect"), str(work / "agent")))),
            }
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in scenarios}
            for _ in range(args.runs):
                for name, (url, load) in scenarios.items():
                    before = relayd.cpu_seconds()
                    result = run_wrk(url, load, args.seconds, None)
                    cpu = relayd.cpu_seconds() - before
                    bad = sum(result.errors.values())
                    if bad:
                        raise RuntimeError(f"{name}: {bad} errors {result.errors}")
                    figures[name].append((result.requests / result.seconds, cpu * 1e6 / result.requests))
        finally:
            relayd.stop()
            discard.stop()
    base_rate = statistics.median(r for r, _ in figures["cached"])
    print(f"{'scenario':<12}{'req/s':>10}{'relayd CPU µs/req':>20}{'vs cached':>11}")
    for name, runs in figures.items():
        rate, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
        print(f"{name:<12}{rate:>10.0f}{cpu:>20.1f}{rate / base_rate:>10.2f}×")


if __name__ == "__main__":
    main()
