"""Micro-benchmark: what a flow's rate limits cost per request (CPU ns), in the process and in Redis.

    python -m benchmarks.micro_ratelimit [--repeat N] [--no-shared]
    python -m benchmarks.micro_ratelimit --case local|shared --count N   # for valgrind

Times, with the process CPU clock (best of N), ``RateLimiter.check`` as relay calls it once
a request's caller is authorized: one limit per subject over 1,000 callers, two limits
(subject AND flow), and a limit whose key table is full (each check drops the least
recently seen key). Limits are generous, so every check admits and charges.

Then the same limits with ``mode = "shared"``, against a redis-server of its own:
``RateLimiter.check_shared`` run as relay runs it (a task per request), 64 requests in
flight at a time, so the commands of one turn of the loop share a write. The CPU is
relay's side only (packing, the round trip's system calls, the task); Redis' own is apart.

``--case C --count N`` only runs N checks of one limit per subject, in the process
("local") or in Redis ("shared"), untimed: the instructions per check are the difference
between two runs under ``valgrind --tool=callgrind``, of N and of 0 checks.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

from benchmarks.micro_heads import cpu_ns
from relay.config import RateLimit, SharedConfig
from relay.identity import Identity
from relay.ratelimit import Buckets, RateLimiter
from relay.shared import SharedState

SUBJECT = RateLimit("subject", "subject", 10**9, 1.0, 10**9)
FLOW = RateLimit("flow", "flow", 10**9, 1.0, 10**9)
CALLERS = [Identity(f"user-{i}", "idp", ("writers",), (), {}, None, "kid", 0) for i in range(1000)]
IN_FLIGHT = 64
SHARED_CHECKS = 20_000


def _checking(limiter: RateLimiter, callers: list[Identity]) -> Callable[[], object]:
    turn = itertools.cycle(callers)
    return lambda: limiter.check(next(turn), "127.0.0.1")


def _shared(limit: RateLimit) -> RateLimit:
    return RateLimit(limit.name, limit.per, limit.count, limit.period, limit.burst, mode="shared")


async def _shared_ns(redis_url: str, limiter: RateLimiter, repeat: int, checks: int = SHARED_CHECKS) -> float:
    """CPU ns per shared check: the best of ``repeat`` runs of ``checks``."""
    shared = SharedState(SharedConfig(redis=redis_url), {})
    shared.start()
    loop = asyncio.get_running_loop()
    while not shared.in_sync:
        await asyncio.sleep(0.01)  # polling the connection's state until it is up
    turn = itertools.cycle(CALLERS)

    async def requests(count: int) -> None:
        for _ in range(count):
            refusal = await loop.create_task(limiter.check_shared(shared, next(turn), "127.0.0.1", True))
            assert refusal is None, refusal

    best = float("inf")
    try:
        for _ in range(repeat):
            started = time.process_time()
            await asyncio.gather(*(requests(checks // IN_FLIGHT) for _ in range(IN_FLIGHT)))
            best = min(best, (time.process_time() - started) / max(1, checks) * 1e9)
    finally:
        await shared.close()
    return best


def _shared_cases(repeat: int, count: int | None = None) -> list[tuple[str, float]]:
    """The shared cases' CPU ns per check; only the first case, ``count`` checks once, if given."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.redis import RedisServer

    with tempfile.TemporaryDirectory(prefix="relay-micro-rl") as workdir:
        redis = RedisServer(Path(workdir))
        try:
            cases = [
                ("shared: one limit per subject", RateLimiter((Buckets(_shared(SUBJECT)),), (), flow="f")),
                ("shared: subject AND flow, one call",
                 RateLimiter((Buckets(_shared(SUBJECT)), Buckets(_shared(FLOW))), (), flow="f")),
            ]
            if count is not None:
                return [(cases[0][0], uvloop.run(_shared_ns(redis.url, cases[0][1], 1, count)))]
            return [(name, uvloop.run(_shared_ns(redis.url, limiter, repeat))) for name, limiter in cases]
        finally:
            redis.stop()


def _count_only(case: str, count: int) -> None:
    if case == "shared":
        _shared_cases(1, count - count % IN_FLIGHT)
        return
    check = _checking(RateLimiter((Buckets(SUBJECT),), ()), CALLERS)
    for _ in range(count):
        check()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_ratelimit")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-shared", action="store_true", help="skip the cases that need redis-server")
    parser.add_argument("--case", choices=("local", "shared"), help="only run --count checks of this case")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    if args.case is not None:
        _count_only(args.case, args.count)
        return
    repeat = args.repeat
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
    if not args.no_shared:
        for name, ns in _shared_cases(max(1, repeat // 2)):
            print(f"{name:<42} {ns:>8.0f}  ({IN_FLIGHT} in flight; Redis' own CPU not counted)")


if __name__ == "__main__":
    main()
