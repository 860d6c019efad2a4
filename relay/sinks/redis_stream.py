"""The ``redis-stream`` sink: adds each request to a Redis stream.

With ``entry = "record"`` every NDJSON line of the body becomes one stream entry; the
lines are checked as the body streams in (as the file sink checks them: a bad line is a
400 naming it, and nothing is added). With ``entry = "body"`` the whole body becomes one
entry. Every entry has these fields:

    data             the record (its line, without the "\\n") or the whole body, byte-exact
    request_id       relay's id of the request (its X-Relay-Request-Id)
    flow             the flow's name
    subject          the verified caller's subject, for flows that require a token
    idempotency_key  the client's Idempotency-Key, when it sent one

Nothing reaches Redis before the whole body has arrived and passed its checks, so the body
is held in memory meanwhile (the flow's ``max_body`` bounds it). Then one Lua script adds
all of the request's entries (XADD, with ``MAXLEN ~ maxlen`` when ``maxlen`` is set) as
one atomic step: no other client's entry falls between them, and a request that fails
adds none. The receipt is ``{"stream", "ids": [first, last], "records"}``, so
``XRANGE stream first last`` returns exactly the request's entries (until trimmed); a
record-mode body without records adds nothing and gets ``"ids": []``.

Idempotency: with an ``Idempotency-Key`` the same script first looks for the key
``STREAM:idempotency:FLOW:KEY``. If it is there, nothing is added and the receipt stored
in it is the answer; if not, the entries are added and the key is set, for
``idempotency_ttl``, in the same step.

Failures: every call to Redis (waiting for a pooled connection, connecting, running the
script) must end within ``timeout``, else the client gets 503 with Retry-After, whether
Redis refused, reset, was stopped or is slow. A stalled Redis may still run a script it
received after relay gave up, so the script carries a deadline and adds nothing once
``_SCRIPT_SHARE`` of ``timeout`` has passed by Redis's clock (which must agree with
relay's to well within the rest of ``timeout``). So a 503 means nothing was added, unless
Redis began the script in time but took longer than the rest of ``timeout`` to run it and
answer: a retry with an Idempotency-Key is always safe. Errors Redis answers are 502 (the
key holds another type, ...), except the transient ones (out of memory, loading, busy
script, read-only replica), which are 503. Failures are counted in ``stats()`` and logged,
at most one line per ``_LOG_EVERY`` seconds per sink.

The pool holds at most ``POOL_SIZE`` connections; a request waits for a free one within its
``timeout``. Nothing is retried: a failed call is the client's 503, and the client decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry

from relay.config import RedisStreamSinkConfig
from relay.errors import BadGateway, RelayError, ServiceUnavailable
from relay.reply import Reply
from relay.request import Request
from relay.sinks._staging import NdjsonChecker
from relay.sinks.base import Receipt, SinkSlots, idempotency_scope, send_receipt

__all__ = ["POOL_SIZE", "RedisStreamSink"]

log = logging.getLogger("relay.sinks.redis_stream")
T = TypeVar("T")

#: connections one sink keeps to Redis at most (Redis runs scripts one at a time anyway)
POOL_SIZE = 16
#: the share of ``timeout`` within which Redis must begin a request's script
_SCRIPT_SHARE = 0.75
_LOG_EVERY = 10.0
_TRANSIENT = (
    redis_errors.ConnectionError,  # refused, reset, loading, no free connection
    redis_errors.TimeoutError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
)

# KEYS[1] the stream; KEYS[2] the idempotency key, if any.
# ARGV[1] deadline (Unix ms), ARGV[2] idempotency ttl (s), ARGV[3] maxlen (0: none),
# ARGV[4] n, ARGV[5 .. 4+2n] the fields every entry shares, then one "data" per entry.
# Answers {"added", first id, last id}, {"seen", "first last records"} or {"late"}.
_ADD_SCRIPT = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[1]) then
  return {'late'}
end
local dedupe = KEYS[2]
if dedupe then
  local seen = redis.call('GET', dedupe)
  if seen then return {'seen', seen} end
end
local xadd = {'XADD', KEYS[1]}
if ARGV[3] ~= '0' then
  xadd[#xadd + 1] = 'MAXLEN'
  xadd[#xadd + 1] = '~'
  xadd[#xadd + 1] = ARGV[3]
end
xadd[#xadd + 1] = '*'
xadd[#xadd + 1] = 'data'
local slot = #xadd + 1
local shared = 4 + 2 * tonumber(ARGV[4])
for i = 5, shared do xadd[slot + i - 4] = ARGV[i] end
local first, last
for i = shared + 1, #ARGV do
  xadd[slot] = ARGV[i]
  last = redis.call(unpack(xadd))
  first = first or last
end
if dedupe then
  redis.call('SET', dedupe, first .. ' ' .. last .. ' ' .. (#ARGV - shared), 'EX', ARGV[2])
end
return {'added', first, last}
"""


async def _within(timeout: float, call: Coroutine[Any, Any, T]) -> T:
    """``call``'s result, or TimeoutError once ``timeout`` has passed, whatever ``call`` does.

    ``asyncio.timeout`` alone is not enough: redis-py sometimes loses the cancellation (a
    request waiting for a pooled connection goes on to connect and read with a timeout of
    its own), so the call runs as a task of its own, which is cancelled and left to end by
    itself. Should it still reach Redis, its script's deadline has passed and it adds nothing.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_forget)
    if not done:
        raise TimeoutError
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class _Failures:
    """Counts one sink's failures and logs them without flooding the log."""

    __slots__ = ("_sink", "count", "_logged_at", "_unlogged")

    def __init__(self, sink: str) -> None:
        self._sink = sink
        self.count = 0
        self._logged_at = -_LOG_EVERY
        self._unlogged = 0

    def record(self, err: RelayError) -> RelayError:
        """Count and (rate-limited) log ``err``; returns it for raising."""
        self.count += 1
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY:
            self._unlogged += 1
            return err
        more, self._unlogged, self._logged_at = self._unlogged, 0, now
        if more:
            log.warning("redis-stream sink %s: %s (and %d failures since the last line)", self._sink, err.detail, more)
        else:
            log.warning("redis-stream sink %s: %s", self._sink, err.detail)
        return err


class RedisStreamSink:
    """Adds each request's records (or body) to ``config.stream`` (see the module docstring)."""

    def __init__(self, config: RedisStreamSinkConfig) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.config = config
        self._stream = config.stream.encode("utf-8")
        self._stream_name = config.stream
        self._pool = BlockingConnectionPool.from_url(
            config.url,
            max_connections=POOL_SIZE,
            timeout=config.timeout,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis(connection_pool=self._pool)
        self._add = self._redis.register_script(_ADD_SCRIPT)
        self._failures = _Failures(config.name)
        self._added = 0
        self._replays = 0

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> None:
        return None  # delivered the general way

    def open(self, request: Request, answers: bool, reply: Reply | None) -> RedisStreamDelivery:
        return RedisStreamDelivery(self, request)

    async def add(self, request: Request, entries: list[bytes]) -> Receipt:
        """Add ``entries`` as one atomic step; the receipt says which ids they got."""
        if not entries:
            return {"stream": self._stream_name, "ids": [], "records": 0}
        keys = [self._stream]
        shared = [b"request_id", request.request_id.encode("ascii"), b"flow", request.flow.name.encode("ascii")]
        if request.identity is not None:
            shared += (b"subject", request.identity.subject.encode("utf-8"))
        scope = idempotency_scope(request)
        if scope is not None:
            flow, key = scope
            keys.append(b"%s:idempotency:%s:%s" % (self._stream, flow, key))
            shared += (b"idempotency_key", key)
        timeout = self.config.timeout
        deadline_ms = int((time.time() + timeout * _SCRIPT_SHARE) * 1000)
        head = [deadline_ms, int(self.config.idempotency_ttl), self.config.maxlen or 0, len(shared) // 2]
        try:
            answer = await _within(timeout, self._add(keys=keys, args=[*head, *shared, *entries]))
        except TimeoutError:
            raise self._unavailable(f"Redis did not answer within {timeout:g}s") from None
        except _TRANSIENT as exc:
            raise self._unavailable(f"Redis is unavailable: {exc}") from None
        except redis_errors.RedisError as exc:
            if str(exc).startswith("BUSY"):
                raise self._unavailable(f"Redis is busy: {exc}") from None
            raise self._failures.record(BadGateway(f"Redis refused the entries: {exc}", self.name)) from None
        return self._receipt(answer, len(entries))

    def _receipt(self, answer: list[bytes], records: int) -> Receipt:
        outcome = answer[0]
        if outcome == b"added":
            self._added += records
            ids = [answer[1].decode("ascii"), answer[2].decode("ascii")]
        elif outcome == b"seen":
            self._replays += 1
            first, last, count = answer[1].decode("ascii").split(" ")
            ids, records = [first, last], int(count)
        else:
            raise self._unavailable("Redis began the script after its deadline (stalled, or its clock "
                                    "is ahead of relay's): nothing was added")
        return {"stream": self._stream_name, "ids": ids, "records": records}

    def _unavailable(self, detail: str) -> RelayError:
        return self._failures.record(ServiceUnavailable(detail, self.name, retry_after=1))

    def stats(self) -> dict[str, int]:
        """Counters: entries added, requests answered from an idempotency key, failures."""
        return {"added": self._added, "replays": self._replays, "failures": self._failures.count}

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()


class RedisStreamDelivery:
    """One request's body, held until it is complete, then added to the stream."""

    __slots__ = ("_sink", "_request", "_checker", "_pieces")

    stopped = False  # a stream takes the whole body

    def __init__(self, sink: RedisStreamSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        self._checker = NdjsonChecker() if sink.config.entry == "record" else None
        self._pieces: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if self._checker is not None:
            self._checker.feed(data)
        self._pieces.append(data)

    async def finish(self) -> Receipt:
        pieces, self._pieces = self._pieces, []
        body = b"".join(pieces)
        del pieces  # the joined body replaces them: hold one copy, not two
        if self._checker is None:
            entries = [body]
        else:
            self._checker.finish()
            entries = body.split(b"\n")
            if not entries[-1]:
                entries.pop()  # what follows the final "\n" (the checker refused empty lines)
        return await self._sink.add(self._request, entries)

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        records = self._checker.records if self._checker is not None else None
        send_receipt(reply, self._request, receipts, records)

    def abort(self) -> None:
        self._pieces = []
