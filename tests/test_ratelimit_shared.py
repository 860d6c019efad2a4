"""Rate limits counted in a real redis-server (``mode = "shared"``): two instances share
one count exactly; AND-ed limits are charged all or none; a refused shared check gives
the local charges back; buckets expire; a Redis that forgot the script still answers;
and a Redis killed or hung gets each flow's shared_state answer, within the timeout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest

from relay.config import RateLimit, SharedConfig
from relay.errors import RateLimited, RateLimitUnavailable, RelayError
from relay.identity import Identity
from relay.ratelimit import Buckets, RateLimiter
from relay.ratelimit_shared import bucket_key
from relay.shared import SharedState
from relay.sinks._resp import RedisAddress, RedisConnection, connect, pack
from support.deliveries import run
from support.redis import REDIS_SERVER, RedisServer, server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

#: hourly limits: nothing refills while a test runs, so every count is exact
SUBJECT = RateLimit("subject", "subject", 10, 3600.0, 3, mode="shared")
FLOW = RateLimit("flow", "flow", 10, 3600.0, 5, mode="shared")
LOCAL = RateLimit("here", "flow", 10, 3600.0, 5)


def caller(subject: str) -> Identity:
    return Identity(subject, "idp", (), (), {}, None, "kid", 0)


async def in_sync(redis_url: str, prefix: str, timeout: float = 2.0) -> SharedState:
    shared = SharedState(SharedConfig(redis=redis_url, key_prefix=prefix, timeout=timeout, reconnect_max=0.1), {})
    shared.start()
    await until(lambda: shared.in_sync, "the shared state to be in sync")
    return shared


async def until(condition: object, what: str, within: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # polling a condition, with a deadline


def limiter(*limits: RateLimit, flow: str = "f") -> RateLimiter:
    return RateLimiter(tuple(Buckets(limit) for limit in limits), (), flow=flow)


async def ask(limits: RateLimiter, shared: SharedState | None, who: Identity | None = None,
              fail_closed: bool = True) -> RelayError | None:
    """Both checks, as a request goes through them: the local limits, then the shared ones."""
    refusal = limits.check(who, "127.0.0.1")
    if refusal is not None:
        return refusal
    return await limits.check_shared(shared, who, "127.0.0.1", fail_closed)


async def admitted(checks: list[Awaitable[RelayError | None]]) -> int:
    return sum(answer is None for answer in await asyncio.gather(*checks))


def test_two_instances_share_one_count_and_idle_buckets_expire(server: RedisServer) -> None:
    prefix = uuid.uuid4().hex

    async def main() -> tuple[int, RelayError | None, RateLimiter, RateLimiter]:
        one, two = await in_sync(server.url, prefix), await in_sync(server.url, prefix)
        try:
            here, there = limiter(FLOW), limiter(FLOW)  # the same flow and limit on two relayd
            total = await admitted([ask(limits, shared) for _ in range(10) for limits, shared in
                                    ((here, one), (there, two))])
            return total, await ask(here, one), here, there
        finally:
            await one.close()
            await two.close()

    total, refusal, here, there = run(main)
    assert total == FLOW.burst
    assert isinstance(refusal, RateLimited) and refusal.limit == "flow" and refusal.policy == '"flow";q=10;w=3600'
    assert 1 < refusal.retry_after <= 360  # one interval of 10/h, counted by Redis' clock
    assert here.limits[0].admitted + there.limits[0].admitted == FLOW.burst
    assert here.limits[0].limited + there.limits[0].limited == 20 + 1 - FLOW.burst
    with server.client() as client:
        ttl = client.pttl(bucket_key(prefix, "f", "flow", ""))
    assert 0 < ttl <= FLOW.burst * 360_000  # gone once the bucket would read as empty


def test_anded_limits_are_charged_all_or_none(server: RedisServer) -> None:
    prefix = uuid.uuid4().hex

    async def main() -> tuple[int, int, RateLimiter]:
        shared = await in_sync(server.url, prefix)
        try:
            limits = limiter(SUBJECT, FLOW)
            ann = await admitted([ask(limits, shared, caller("ann")) for _ in range(6)])
            bob = await admitted([ask(limits, shared, caller("bob")) for _ in range(6)])
            return ann, bob, limits
        finally:
            await shared.close()

    ann, bob, limits = run(main)
    # ann's refusals by her subject limit took nothing of the flow's 5: bob gets the other 2
    assert (ann, bob) == (3, 2)
    assert [(b.admitted, b.limited) for b in limits.limits] == [(5, 3), (5, 4)]


def test_a_refusal_by_a_shared_limit_gives_the_local_charges_back(server: RedisServer) -> None:
    prefix = uuid.uuid4().hex
    shared_flow = RateLimit("all", "flow", 10, 3600.0, 2, mode="shared")

    async def main() -> tuple[int, int]:
        shared = await in_sync(server.url, prefix)
        try:
            limits = limiter(LOCAL, shared_flow)
            first = await admitted([ask(limits, shared) for _ in range(4)])
            # the local limit was charged only for the 2 admitted: 3 of its 5 are left
            return first, sum(limits.check(None, None) is None for _ in range(5))
        finally:
            await shared.close()

    assert run(main) == (2, 3)


def test_a_redis_that_forgot_the_script_is_sent_it_again(server: RedisServer) -> None:
    prefix = uuid.uuid4().hex

    async def main() -> list[int]:
        shared = await in_sync(server.url, prefix)
        try:
            limits = limiter(FLOW)
            counts = [await admitted([ask(limits, shared) for _ in range(2)])]
            with server.client() as client:
                client.script_flush()
            counts.append(await admitted([ask(limits, shared) for _ in range(4)]))
            return counts
        finally:
            await shared.close()

    assert run(main) == [2, 3]


def test_redis_killed_fail_closed_answers_503_fail_open_counts_here(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)

    async def main() -> tuple[RelayError | None, int, RelayError | None, int, RateLimiter, RateLimiter]:
        shared = await in_sync(redis.url, "relay", timeout=0.5)
        closed, opened = limiter(FLOW, flow="closed"), limiter(FLOW, flow="open")
        try:
            assert await ask(closed, shared) is None
            await asyncio.to_thread(redis.kill)
            unavailable = await ask(closed, shared)
            # fail-open: the shared limit counted in this process while Redis is away
            here = await admitted([ask(opened, shared, fail_closed=False) for _ in range(8)])
            await until(lambda: shared.disconnects, "the shared state to see Redis gone")
            await asyncio.to_thread(redis.restart)  # empty: the counts start afresh
            await until(lambda: shared.in_sync, "the shared state to be back in sync")
            back = await ask(closed, shared)
            again = await admitted([ask(opened, shared, fail_closed=False) for _ in range(8)])
            return unavailable, here, back, again, closed, opened
        finally:
            await shared.close()

    try:
        unavailable, here, back, again, closed, opened = run(main)
    finally:
        redis.stop()
    assert isinstance(unavailable, RateLimitUnavailable) and unavailable.status == 503
    assert unavailable.retry_after == 1 and "'flow' cannot be checked" in unavailable.detail
    assert here == FLOW.burst and opened.limits[0].errors == 8
    assert back is None and again == FLOW.burst
    assert closed.limits[0].errors == 1


def test_a_hung_redis_is_given_up_on_within_the_timeout(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)

    async def main() -> tuple[RelayError | None, float]:
        shared = await in_sync(redis.url, "relay", timeout=0.2)
        try:
            redis.pause()  # SIGSTOP: the connection stays open, nothing is answered
            started = time.monotonic()
            refusal = await limiter(FLOW).check_shared(shared, None, None, True)
            return refusal, time.monotonic() - started
        finally:
            redis.resume()
            await shared.close()

    try:
        refusal, took = run(main)
    finally:
        redis.stop()
    assert isinstance(refusal, RateLimitUnavailable)
    assert took < 1.0


def test_commands_of_one_turn_share_a_write_and_keep_their_order(server: RedisServer) -> None:
    async def main() -> list[object]:
        connection: RedisConnection = await connect(RedisAddress.from_url(server.url))
        try:
            soon = [connection.call_soon(pack("ECHO", f"soon-{i}")) for i in range(3)]
            # written at once, after the corked ones: its answer must not be taken for theirs
            now = connection.call(pack("ECHO", "now"))
            return list(await asyncio.gather(*soon, *now))
        finally:
            connection.close()

    assert run(main) == [b"soon-0", b"soon-1", b"soon-2", b"now"]
