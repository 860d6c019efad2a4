"""Rate limits counted in Redis for every relayd behind one proxy (``mode = "shared"``).

A request's shared limits are checked in one call of one Lua script, which Redis runs
atomically: it reads every limit's bucket, and only when all of them admit does it move
each on, so no limit is charged for a request another one refuses, and no two instances
can both take the last slot (no read-modify-write race). The clock is Redis' own
(``TIME`` inside the script), so instances whose clocks disagree still count alike.

A bucket is one string key, ``PREFIX:ratelimit:FLOW:LIMIT:KEY``, holding the limit's
GCRA time in microseconds of Redis' clock; it expires when that time has passed, which is
when it would read as empty anyway, so idle callers leave nothing behind.

The script is sent by its SHA1 (``EVALSHA``); a Redis that does not know it yet (started
afresh, or its scripts flushed) answers ``NOSCRIPT``, and the call is made again with the
script itself (``EVAL``), which also stores it for the next ones.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from relay.sinks._resp import ReplyError, pack

if TYPE_CHECKING:
    from relay.ratelimit import Buckets
    from relay.shared import SharedState

__all__ = ["bucket_key", "charge_shared"]

# KEYS[i]: limit i's bucket; ARGV[2i-1]: its interval and ARGV[2i]: its tolerance (the
# burst, in intervals), in microseconds. Answers {0, 0} when all admit (each charged),
# else {i, wait}: the first limit refusing, and microseconds until the request would fit.
# (Times near 1.7e15 µs are doubles 0.25 µs apart: finer intervals, rates above a few
# million a second, are counted coarsely; a bucket lives at least 1 ms.)
GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local arrivals = {}
for i, key in ipairs(KEYS) do
  local arrival = math.max(tonumber(redis.call('GET', key)) or now, now) + tonumber(ARGV[2 * i - 1])
  local wait = arrival - now - tonumber(ARGV[2 * i])
  if wait > 0 then return {i, math.ceil(wait)} end
  arrivals[i] = arrival
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.17g', arrivals[i]), 'PX', math.max(1, math.ceil((arrivals[i] - now) / 1000)))
end
return {0, 0}
"""
GCRA_SHA1 = hashlib.sha1(GCRA.encode("ascii")).hexdigest()


def bucket_key(prefix: str, flow: str, limit: str, key: str) -> str:
    return f"{prefix}:ratelimit:{flow}:{limit}:{key}"


async def charge_shared(shared: SharedState, flow: str, limits: Sequence[Buckets],
                        keys: Sequence[str]) -> tuple[int, float]:
    """Charge a request to each of ``limits`` (under its key of ``keys``) if all admit it.

    Returns ``(0, 0.0)`` when they do, else the 1-based position of the first limit that
    refuses and the seconds until the request would fit. Raises ConnectionError when Redis
    cannot be asked, does not answer within ``[shared] timeout``, or answers an error.
    """
    prefix = shared.config.key_prefix
    names = [bucket_key(prefix, flow, buckets.config.name, key) for buckets, key in zip(limits, keys)]
    args: list[str | int | float] = [len(names), *names]
    for buckets in limits:
        args += (buckets.interval_us, buckets.tolerance_us)
    answer = await _call(shared, pack("EVALSHA", GCRA_SHA1, *args))
    if isinstance(answer, ReplyError) and str(answer).startswith("NOSCRIPT"):
        answer = await _call(shared, pack("EVAL", GCRA, *args))
    if isinstance(answer, ReplyError):
        raise ConnectionError(f"Redis refused the rate-limit check: {answer}")
    if not (isinstance(answer, list) and len(answer) == 2 and all(isinstance(n, int) for n in answer)):
        raise ConnectionError(f"Redis answered the rate-limit check with {answer!r:.80}")
    return answer[0], answer[1] / 1e6


async def _call(shared: SharedState, command: bytes) -> object:
    timeout = shared.config.timeout
    try:
        return await asyncio.wait_for(shared.command(command), timeout)
    except TimeoutError:
        raise ConnectionError(f"Redis did not answer within {timeout:g}s") from None
