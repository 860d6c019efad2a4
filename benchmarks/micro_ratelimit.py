"""Micro-benchmark: what a flow's rate limits cost per request (CPU ns), counted in the process.

    python -m benchmarks.micro_ratelimit [--repeat N]

Times, with the process CPU clock (best of N), ``RateLimiter.check`` as relay calls it once
a request's caller is authorized: one limit per subject over 1,000 callers, two limits
(subject AND flow), and a limit whose key table is full (each check drops the least
recently seen key). Limits are generous, so every check admits and charges.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

from benchmarks.micro_heads import cpu_ns
from relay.config import RateLimit
from relay.identity import Identity
from relay.ratelimit import Buckets, RateLimiter

SUBJECT = RateLimit("subject", "subject", 10**9, 1.0, 10**9)
FLOW = RateLimit("flow", "flow", 10**9, 1.0, 10**9)
CALLERS = [Identity(f"user-{i}", "idp", ("writers",), (), {}, None, "kid", 0) for i in range(1000)]


def _checking(limiter: RateLimiter, callers: list[Identity]) -> Callable[[], object]:
    turn = itertools.cycle(callers)
    return lambda: limiter.check(next(turn), "127.0.0.1")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_ratelimit")
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    turn = itertools.cycle(CALLERS)
    baseline = cpu_ns(lambda: next(turn), repeat)
    cases = [
        ("one limit per subject, 1,000 callers", _checking(RateLimiter((Buckets(SUBJECT),), ()), CALLERS)),
        ("subject AND flow", _checking(RateLimiter((Buckets(SUBJECT), Buckets(FLOW)), ()), CALLERS)),
        ("per subject, key table full (evicting)",
         _checking(RateLimiter((Buckets(SUBJECT, max_keys=500),), ()), CALLERS)),
    ]
    print(f"{'case':<42} {'ns/call':>8}  (the loop alone, {baseline:.0f} ns, subtracted)")
    for name, fn in cases:
        print(f"{name:<42} {cpu_ns(fn, repeat) - baseline:>8.0f}")


if __name__ == "__main__":
    main()
