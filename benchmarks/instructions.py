"""relayd's instructions per request under callgrind: a figure the machine's load cannot blur.

    python -m benchmarks.instructions [--requests N] [--tree DIR ...]

relayd runs under ``valgrind --tool=callgrind`` in front of the benchmarks' upstream
lighttpd; after a warm-up the counters are zeroed, ``N`` requests for one RS256 token's
flow are sent one after the other, and the instructions counted since are divided by
``N``. Two ways in: keep-alive over TCP (as wrk or an API client comes), and a new Unix
connection per request with ``Connection: close`` (as lighttpd's mod_proxy comes).

``--tree`` adds another checkout of relay (its compiled module built) measured in the
same invocation, for before/after ratios; ``RELAY_NO_EXTENSIONS=1`` in the environment
measures the pure-Python twin.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks import tokens
from benchmarks.procs import Cores, Proc
from benchmarks.systems import HELLO, ROOT, Context, relay_config, start_upstreams

_WARM_UP = 50


def _head(token: str, close: bool) -> bytes:
    extra = b"Connection: close\r\nX-Forwarded-For: 192.0.2.7\r\n" if close else b""
    return (b"GET " + HELLO.encode() + b" HTTP/1.1\r\nHost: bench.test\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n" + extra + b"\r\n")


def _read_answer(sock: socket.socket) -> None:
    """Read one answer with a Content-Length body; fail on anything but 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"relayd answered {head[:40]!r}")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += _recv(sock)


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("relayd closed the connection early")
    return data


def _keep_alive(port: int, token: str) -> Callable[[int], None]:
    head = _head(token, close=False)

    def send(count: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for _ in range(count):
                sock.sendall(head)
                _read_answer(sock)
    return send


def _per_connection(path: str, token: str) -> Callable[[int], None]:
    head = _head(token, close=True)

    def send(count: int) -> None:
        for _ in range(count):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(60)
                sock.connect(path)
                sock.sendall(head)
                _read_answer(sock)
                while sock.recv(65536):  # relayd closes after the answer
                    pass
    return send


def _callgrind_total(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def measure(ctx: Context, tree: Path, requests: int, token: str) -> dict[str, float]:
    """Instructions per request of relayd from ``tree``, each way in."""
    port, sock = ctx.port(), str(ctx.path("relay.sock"))
    config = ctx.path("relay.toml")
    config.write_text(relay_config(ctx, port, sock, "RS256"))
    env = dict(os.environ) | {"PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    out = ctx.path("callgrind.out")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "relay", "-c", str(config)]
    relayd = Proc("relayd", argv, ctx.path("relayd.log"), cpus=None, env=env, cwd=tree)
    figures = {}
    try:
        relayd.wait_ready([("127.0.0.1", port), sock], timeout=300)
        for name, send in (("keep-alive (TCP)", _keep_alive(port, token)),
                           ("a connection per request (Unix)", _per_connection(sock, token))):
            send(_WARM_UP)
            subprocess.run(["callgrind_control", "--zero", str(relayd.pid)], check=True,
                           capture_output=True)
            send(requests)
            for old in ctx.workdir.glob("callgrind.out.*"):
                old.unlink()
            subprocess.run(["callgrind_control", "--dump", str(relayd.pid)], check=True,
                           capture_output=True)
            dump = next(ctx.workdir.glob("callgrind.out.*"))
            figures[name] = _callgrind_total(dump) / requests
    finally:
        relayd.stop(60)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="another relay checkout to measure beside this one")
    args = parser.parse_args()
    keys = tokens.ensure()
    token = keys.first_token("RS256")
    trees = [ROOT, *args.tree]
    with tempfile.TemporaryDirectory(prefix="relay-instructions-") as scratch:
        ctx = Context(Path(scratch), Cores(None, None), keys)
        upstreams = start_upstreams(ctx)
        try:
            results = {tree: measure(ctx, tree, args.requests, token) for tree in trees}
        finally:
            for proc in reversed(upstreams):
                proc.stop()
    ways = list(results[ROOT])
    print(f"{'tree':<40} " + " ".join(f"{way:>32}" for way in ways) + "   (instructions per request)")
    for tree, figures in results.items():
        print(f"{str(tree)[-40:]:<40} " + " ".join(f"{figures[way]:>32,.0f}" for way in ways))
    for tree in args.tree:
        print(f"this tree / {tree}: " + ", ".join(
            f"{way} {results[ROOT][way] / results[tree][way]:.3f}" for way in ways))


if __name__ == "__main__":
    main()
