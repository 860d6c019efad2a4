"""Operations figures, each side by side with its baseline in one invocation:

* relayd with ``workers = 1`` vs ``workers = 2`` behind lighttpd (both unpinned: two
  workers need both cores), wrk -t2 -c64 through the chain;
* overload shedding: relayd (TCP) offered far more concurrent requests (wrk -c1024)
  than ``max_in_flight`` admits, with shedding on (``max_in_flight = 64``) and off
  (``max_in_flight`` = 1,000,000). The latency of *admitted* requests is relayd's own
  ``duration_ms`` from its audit log (status 200 only; the time a request waits in the
  kernel's accept queue is not in it), beside wrk's figures for all answers.

    python -m benchmarks.operations [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.loadgen import Load, run_wrk
from benchmarks.procs import Cores
from benchmarks.systems import HELLO, Context, _front_lighttpd, relay_config, start_upstreams
from benchmarks.tokens import ensure

ROOT = Path(__file__).resolve().parent.parent


def _start_relayd(ctx: Context, extra: str) -> tuple[int, str]:
    port, sock = ctx.port(), str(ctx.path("relay.sock"))
    config = ctx.path("relay.toml")
    text = relay_config(ctx, port, sock, "none").replace("[server]\n", f"[server]\n{extra}\n", 1)
    config.write_text(text)
    ctx.path("audit.jsonl").unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ctx.start("relayd", [sys.executable, "-m", "relay", "-c", str(config)], [("127.0.0.1", port), sock], env=env)
    return port, sock


def _admitted_ms(ctx: Context) -> list[float]:
    durations = []
    for log in ctx.workdir.glob("audit*.jsonl"):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("status") == 200 and "duration_ms" in record:
                durations.append(float(record["duration_ms"]))
    return sorted(durations)


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def workers(ctx: Context, seconds: float) -> None:
    print(f"{'workers':>8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for count in (1, 2):
        admin = ctx.path("admin.sock")
        _, sock = _start_relayd(ctx, f'workers = {count}\nadmin_socket = "{admin}"')
        _, url = _front_lighttpd(ctx, sock)
        result = run_wrk(url + HELLO, Load("plain.lua"), seconds, None)
        print(f"{count:>8} {result.rate:>10,.0f} {result.p50_us / 1000:>8.2f} {result.p99_us / 1000:>8.2f} "
              f"{result.error_count:>7}")
        ctx.stop_all()


def shedding(ctx: Context, seconds: float) -> None:
    print(f"{'shedding':>9} {'answers/s':>10} {'200/s':>8} {'admitted p50 ms':>16} {'admitted p99 ms':>16} "
          f"{'all p99 ms':>11}")
    for label, limit in (("on", 64), ("off", 1_000_000)):
        port, _ = _start_relayd(ctx, f'max_in_flight = {limit}\nmax_loop_lag = "0s"')
        result = run_wrk(f"http://127.0.0.1:{port}{HELLO}", Load("plain.lua", connections=1024), seconds,
                         ctx.cores.load)
        ctx.stop_all()  # flushes the audit log
        admitted = _admitted_ms(ctx)
        print(f"{label:>9} {result.rate:>10,.0f} {len(admitted) / seconds:>8,.0f} "
              f"{statistics.median(admitted) if admitted else float('nan'):>16.2f} "
              f"{_percentile(admitted, 0.99):>16.2f} {result.p99_us / 1000:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-ops-", dir="/dev/shm") as scratch:
        ctx = Context(Path(scratch), Cores.detect(), ensure())
        upstreams = start_upstreams(ctx)
        try:
            workers(ctx, args.seconds)
            print()
            shedding(ctx, args.seconds)
        finally:
            ctx.stop_all()
            for proc in upstreams:
                proc.stop()


if __name__ == "__main__":
    main()
