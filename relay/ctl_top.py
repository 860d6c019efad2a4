"""``relayctl top``: per-flow rates, latencies, denials and sink errors, refreshed in place.

Every ``--interval`` it asks relayd for a ``snapshot`` of its counters (and its
``status``), and shows what changed since the previous one: requests per second,
the p50/p99 latency of the requests of that interval (from the duration histograms),
how many were denied (401/403) and how many a sink failed. On a terminal each frame
replaces the last (plain ANSI: cursor home, clear); piped, frames follow one another.
``-n COUNT`` stops after COUNT frames; Ctrl-C stops at once, quietly, with status 0.
``--json`` prints one line per refresh instead: the interval's ``stats`` rows.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson

from relay.admin_client import CtlError, ask, socket_path
from relay.metrics import FlowStats, Snapshot, flow_stats, requests_since

if TYPE_CHECKING:
    from relay.ctl import SubParsers

__all__ = ["top_commands"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor to the top left, then erase the screen
_COLUMNS = ("FLOW", "REQ/S", "OK/S", "4XX/S", "5XX/S", "DENIED/S", "SINK_ERR/S", "IN_KIB/S", "OUT_KIB/S",
            "P50_MS", "P99_MS")


def _snapshot(path: str, timeout: float) -> Snapshot:
    reply, _ = ask(path, {"cmd": "snapshot"}, timeout)
    if not reply["ok"]:
        raise CtlError(f"snapshot: {reply.get('error', 'failed')}")
    return cast(Snapshot, reply["snapshot"])


def _status(path: str, timeout: float) -> dict[str, Any]:
    reply, _ = ask(path, {"cmd": "status"}, timeout)
    return reply


def _rate(count: float, seconds: float) -> str:
    return f"{count / seconds:.1f}"


def _row(stats: FlowStats, seconds: float) -> tuple[str, ...]:
    return (
        stats["flow"], _rate(stats["requests"], seconds), _rate(stats["ok"], seconds),
        _rate(stats["client_errors"], seconds), _rate(stats["server_errors"], seconds),
        _rate(stats["denied"], seconds), _rate(stats["sink_errors"], seconds),
        _rate(stats["bytes_in"] / 1024, seconds), _rate(stats["bytes_out"] / 1024, seconds),
        f"{stats['p50_ms']:.2f}" if stats["requests"] else "-",
        f"{stats['p99_ms']:.2f}" if stats["requests"] else "-",
    )


def frame(status: dict[str, Any], now: Snapshot, before: Snapshot, seconds: float,
          flows: list[str]) -> list[str]:
    """One screen: a status line, then a row per flow (every flow seen so far, busy or not)."""
    interval = {s["flow"]: s for s in flow_stats(requests_since(now, before))}
    rows = [_row(interval[flow], seconds) if flow in interval else (flow, *("0.0",) * 8, "-", "-")
            for flow in flows]
    widths = [max(len(r[i]) for r in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    head = (f"relayd pid {status.get('pid', '?')}  up {_uptime(status.get('uptime_s', 0))}  "
            f"policy v{status.get('policy_version', '?')}  connections {status.get('connections', '?')}  "
            f"in flight {status.get('in_flight', '?')}{'  DRAINING' if status.get('draining') else ''}"
            f"  (last {seconds:.1f}s)")
    return [head, "", line(_COLUMNS), *(line(r) for r in rows)]


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    return (f"{days}d" if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


def _top(args: argparse.Namespace) -> int:
    path = socket_path(args)
    count = 1 if args.once else args.count
    tty = sys.stdout.isatty()
    # Ctrl-C is how top is meant to end: it ends the wait between two frames, rather than
    # raising KeyboardInterrupt wherever it lands (a socket's close, a finalizer) and
    # leaving a traceback or an "Exception ignored" line on the way out
    stopped = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    try:
        before = _snapshot(path, args.timeout)
        taken = time.monotonic()
        flows: list[str] = sorted({r["flow"] for r in before["requests"]})
        shown = 0
        while count is None or shown < count:
            if stopped.wait(max(0.0, taken + args.interval - time.monotonic())):
                break
            now = _snapshot(path, args.timeout)
            at = time.monotonic()
            flows = sorted(set(flows) | {r["flow"] for r in now["requests"]})
            if args.json:  # one line per refresh: the interval's counts, for scripts
                interval = flow_stats(requests_since(now, before))
                sys.stdout.write(orjson.dumps({"seconds": round(at - taken, 3), "flows": interval}).decode() + "\n")
            else:
                lines = frame(_status(path, args.timeout), now, before, at - taken, flows)
                sys.stdout.write((_CLEAR if tty else ("\n" if shown else "")) + "\n".join(lines) + "\n")
            sys.stdout.flush()
            before, taken = now, at
            shown += 1
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse


def top_commands(sub: SubParsers) -> None:
    top = sub.add_parser("top", help="per-flow rates, latencies, denials and sink errors, every second")
    top.add_argument("-n", "--count", type=_positive(int), metavar="COUNT", help="stop after COUNT refreshes")
    top.add_argument("--once", action="store_true", help="one refresh, then stop (same as -n 1)")
    top.add_argument("--interval", type=_positive(float), default=1.0, metavar="SECONDS",
                     help="time between refreshes (default: %(default)s)")
    top.set_defaults(run=_top)
