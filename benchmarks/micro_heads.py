"""Micro-benchmark: what relay's request-head checks cost per request (CPU ns).

    python -m benchmarks.micro_heads [--repeat N]

Times, with the process CPU clock (best of N), the checks every request meets when its
head completes: the request line (the common case, a request at the start of a read),
a Host already seen, a plain path answered from the memo, and the few statements around
them (the bookkeeping in data_received and on_message_begin included).
"""

from __future__ import annotations

import argparse
import time
import timeit
import types
from collections.abc import Callable

from relay.hosts import check_host
from relay.paths import normalize_path
from relay.protocol import IDLE, ClientConnection

HEAD = (b"GET /orders/42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: orders-client/2.4\r\n"
        b"Authorization: Bearer " + b"Q" * 800 + b"\r\nAccept: */*\r\n\r\n")
METHOD = b"GET"
HOST = b"api.example.com"


def _connection() -> ClientConnection:
    conn = ClientConnection(types.SimpleNamespace(trust_unix_peers=False), unix=True)  # type: ignore[arg-type]
    conn._url = b"/orders/42"
    return conn


def _all_checks(conn: ClientConnection) -> Callable[[], None]:
    def run() -> None:
        state = IDLE
        conn._read = HEAD                   # data_received
        conn._read_fresh = state == IDLE
        conn._line = conn._read             # on_message_begin
        conn._line_at_start = conn._read_fresh
        conn._read_fresh = False
        conn._line_open = True
        conn._check_request_line(METHOD)    # _build_request and _check_framing
        if ";" in "/orders/42":
            pass
        check_host(HOST)
        if conn._url[:1] != b"/":
            pass
    return run


def cpu_ns(fn: Callable[[], object], repeat: int, number: int = 200_000) -> float:
    """CPU ns per call of ``fn``: the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_heads")
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    conn = _connection()
    conn._line, conn._line_at_start = HEAD, True
    baseline = cpu_ns(lambda: None, repeat)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("all head checks added per request", _all_checks(_connection())),
        ("request line, request at a read's start", lambda: conn._check_request_line(METHOD)),
        ("Host already seen", lambda: check_host(HOST)),
        ("for scale: plain path from the memo", lambda: normalize_path(b"/orders/42")),
    ]
    print(f"{'case':<42} {'ns/call':>8}  (an empty call, {baseline:.0f} ns, subtracted)")
    for name, fn in cases:
        print(f"{name:<42} {cpu_ns(fn, repeat) - baseline:>8.0f}")


if __name__ == "__main__":
    main()
