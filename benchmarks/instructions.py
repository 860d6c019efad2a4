"""relayd's instructions per request under callgrind: a figure the machine's load cannot blur.

    python -m benchmarks.instructions [--requests N] [--tree DIR ...] [--records]

relayd runs under ``valgrind --tool=callgrind`` in front of the benchmarks' upstream
lighttpd; after a warm-up the counters are zeroed, ``N`` requests for one RS256 token's
flow are sent one after the other, and the instructions counted since are divided by
``N``. Two ways in: keep-alive over TCP (as wrk or an API client comes), and a new Unix
connection per request with ``Connection: close`` (as lighttpd's mod_proxy comes); and,
keep-alive again, each request with an RS256 token relayd has not seen (its signature
checked, its claims read, its identity headers built), the benchmarks' distinct tokens
in turn.

``--records`` measures instead 1 KiB NDJSON records POSTed one per request on 16
connections at once (as ``benchmarks.sinks`` sends them) into a file sink and a
redis-stream sink, configured as ``benchmarks.sinks`` configures them: under callgrind
relayd is the slowest party by far, so concurrent requests share its loop turns and Redis
round trips as they do when it is saturated.

``--tree`` adds another checkout of relay (its compiled module built) measured in the
same invocation, for before/after ratios; ``RELAY_NO_EXTENSIONS=1`` in the environment
measures the pure-Python twin.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks import sinks, tokens
from benchmarks.procs import Cores, Proc
from benchmarks.systems import HELLO, ROOT, Context, relay_config, start_upstreams

_WARM_UP = 50
_RECORD = b'{"record": "' + b"x" * 1010 + b'"}\n'  # 1 KiB with its newline
_CONNECTIONS = 16


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


def _keep_alive_unseen(port: int, unseen: Iterator[str]) -> Callable[[int], None]:
    def send(count: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for token in itertools.islice(unseen, count):
                sock.sendall(_head(token, close=False))
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


def _records(port: int, flow: str) -> Callable[[int], None]:
    """``count`` records POSTed to ``flow`` over ``_CONNECTIONS`` keep-alive connections at once."""
    request = (b"POST /%s/x HTTP/1.1\r\nHost: bench.test\r\nContent-Length: %d\r\n\r\n"
               % (flow.encode(), len(_RECORD)) + _RECORD)

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"relayd answered {head[:40]!r}")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
        writer.close()

    async def send_all(count: int) -> None:
        await asyncio.gather(*(connection(count // _CONNECTIONS) for _ in range(_CONNECTIONS)))

    return lambda count: asyncio.run(send_all(count))


def _under_callgrind(workdir: Path, relayd: Proc, ways: list[tuple[str, Callable[[int], None]]],
                     requests: int, warm_up: int) -> dict[str, float]:
    """Instructions per request of a started ``relayd``, each way in, after ``warm_up`` requests."""
    figures = {}
    for name, send in ways:
        send(warm_up)
        subprocess.run(["callgrind_control", "--zero", str(relayd.pid)], check=True, capture_output=True)
        send(requests)
        for old in workdir.glob("callgrind.out.*"):
            old.unlink()
        subprocess.run(["callgrind_control", "--dump", str(relayd.pid)], check=True, capture_output=True)
        dump = next(workdir.glob("callgrind.out.*"))
        figures[name] = _callgrind_total(dump) / requests
    return figures


def _callgrind(workdir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / 'callgrind.out'}"]


def _tree_env(tree: Path) -> dict[str, str]:
    return dict(os.environ) | {"PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}


def measure(ctx: Context, tree: Path, requests: int, token: str, unseen: Iterator[str]) -> dict[str, float]:
    """Instructions per request of relayd from ``tree``, each way in; ``unseen`` gives the
    tokens for the last way, each used once."""
    port, sock = ctx.port(), str(ctx.path("relay.sock"))
    config = ctx.path("relay.toml")
    config.write_text(relay_config(ctx, port, sock, "RS256"))
    argv = [*_callgrind(ctx.workdir), sys.executable, "-m", "relay", "-c", str(config)]
    relayd = Proc("relayd", argv, ctx.path("relayd.log"), cpus=None, env=_tree_env(tree), cwd=tree)
    try:
        relayd.wait_ready([("127.0.0.1", port), sock], timeout=300)
        ways = [("keep-alive (TCP)", _keep_alive(port, token)),
                ("a connection per request (Unix)", _per_connection(sock, token)),
                ("a token not seen, keep-alive", _keep_alive_unseen(port, unseen))]
        return _under_callgrind(ctx.workdir, relayd, ways, requests, _WARM_UP)
    finally:
        relayd.stop(60)


def measure_records(workdir: Path, tree: Path, requests: int) -> dict[str, float]:
    """Instructions per 1 KiB record of relayd from ``tree``, into a file and a redis stream."""
    bench = sinks.Bench(workdir, Cores(None, None))
    try:
        relayd, url = sinks.relayd(bench, tree, _callgrind(workdir), timeout=300)
        port = int(url.rsplit(":", 1)[1])
        return _under_callgrind(workdir, relayd, [("1 KiB records into a file", _records(port, "file-records")),
                                                  ("1 KiB records into a redis stream", _records(port, "redis-records"))],
                                requests, _WARM_UP * _CONNECTIONS)
    finally:
        bench.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--tree", action="append", type=Path, default=[],
                        help="another relay checkout to measure beside this one")
    parser.add_argument("--records", action="store_true",
                        help="1 KiB NDJSON records into a file and a redis stream, 16 connections at once")
    args = parser.parse_args()
    trees = [ROOT, *args.tree]
    with tempfile.TemporaryDirectory(prefix="relay-instructions-") as scratch:
        if args.records:
            results = {}
            for n, tree in enumerate(trees):
                workdir = Path(scratch) / str(n)
                workdir.mkdir()
                results[tree] = measure_records(workdir, tree, args.requests)
        else:
            keys = tokens.ensure()
            token = keys.first_token("RS256")
            # past the first, which the other ways use; each tree gets tokens of its own
            unseen = iter(keys.tokens["RS256"].read_text(encoding="ascii").split()[1:])
            ctx = Context(Path(scratch), Cores(None, None), keys)
            upstreams = start_upstreams(ctx)
            try:
                results = {tree: measure(ctx, tree, args.requests, token, unseen) for tree in trees}
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
