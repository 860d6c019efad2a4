"""The redis-stream sink's requests, combined: one Lua call per batch, on one connection.

A request hands its steps to the ``Batcher`` as ``Op``s: reserve an Idempotency-Key scope,
add entries (settling the scope, if it has one), release a scope. Up to ``MAX_IN_FLIGHT``
batches are at Redis at once, pipelined on the connection; meanwhile the next ops queue,
and when an answer is in, everything queued (up to ``MAX_BATCH_BYTES``) goes as the next
batch: one EVALSHA of ``SCRIPT``, which Redis runs as one atomic step, the ops in order
(and the batches in the order they were sent). So concurrent requests share a round trip
without any timer or delay (a lone op goes at once, on the loop's next turn), and each
request is still answered only once Redis has answered its own op.

Each op's future gets its own answer. A failure of a batch (connecting, its timeout, an
error Redis answers for the whole script, a script started past its deadline) fails the
ops in that batch, each with its own ``BatchFailed``, and no others. An op whose future
was cancelled (its client went away) before its batch left is not sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from typing import Any

from relay.sinks._resp import LARGE, Part, RedisAddress, RedisConnection, ReplyError, connect, pack, pack_large

__all__ = ["BatchFailed", "Batcher", "Op", "SCRIPT"]

#: a batch takes ops while their entries come to at most this many bytes (one op at least)
MAX_BATCH_BYTES = 1024 * 1024
#: batches at Redis at once, pipelined on the connection: while one is being run the next
#: are on their way, so relay waits less for Redis
MAX_IN_FLIGHT = 4
#: the share of ``timeout`` within which Redis must begin a batch's script
SCRIPT_SHARE = 0.75
#: errors Redis answers for a whole script that pass (503, not 502)
_TRANSIENT = (b"BUSY", b"OOM", b"LOADING", b"READONLY", b"TRYAGAIN", b"MASTERDOWN", b"NOREPLICAS")

# KEYS[1] the stream, KEYS[2..] the ops' scope keys. ARGV[1] deadline (Unix ms),
# ARGV[2] maxlen ("0": none), ARGV[3] seconds a settled scope is kept, ARGV[4] ms a
# reserved scope is held; then the ops, each KIND KEYI TOKEN ... (KEYI: the key's index
# in KEYS, "0" for none):
#   r KEYI TOKEN                           reserve → {"ok"} | {"held", VALUE}
#   x KEYI TOKEN                           release → {"ok"}
#   a KEYI TOKEN FP NF F1 V1 .. N E1 .. EN add → {"added"[, first, last]} | {"held", VALUE}
#                                                | {"error", MESSAGE}
# A scope key holds "p" TOKEN while its request is in flight, then "d" FINGERPRINT
# RECEIPT, RECEIPT being "N FIRST LAST" (or "0" for no entries). Answers "late" alone when
# the script began past its deadline (and did nothing). The shebang makes Redis refuse the
# whole script when it is out of memory, before any op ran.
SCRIPT = """#!lua
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[1]) then
  return 'late'
end
local head = {'XADD', KEYS[1]}
if ARGV[2] ~= '0' then
  head[3], head[4], head[5] = 'MAXLEN', '~', ARGV[2]
end
head[#head + 1] = '*'

local function add(key, token, at)
  local fingerprint, nf = ARGV[at], tonumber(ARGV[at + 1])
  local fields_at = at + 2
  local entries_at = fields_at + 2 * nf + 1
  local n = tonumber(ARGV[entries_at - 1])
  local next_at = entries_at + n
  if key then
    local held = redis.call('GET', key)
    if held and held ~= 'p' .. token then return {'held', held}, next_at end
  end
  local first, last
  if n > 0 then
    local xadd = {unpack(head)}
    for j = fields_at, entries_at - 2 do xadd[#xadd + 1] = ARGV[j] end
    xadd[#xadd + 1] = 'data'
    local slot = #xadd + 1
    xadd[slot] = ARGV[entries_at]
    first = redis.pcall(unpack(xadd))
    if type(first) == 'table' then return {'error', first.err}, next_at end
    last = first
    for j = entries_at + 1, next_at - 1 do
      xadd[slot] = ARGV[j]
      last = redis.call(unpack(xadd))
    end
  end
  if key then
    local receipt = first and (n .. ' ' .. first .. ' ' .. last) or '0'
    redis.call('SET', key, 'd' .. fingerprint .. receipt, 'EX', ARGV[3])
  end
  if first then return {'added', first, last}, next_at end
  return {'added'}, next_at
end

local results = {}
local at = 5
while at <= #ARGV do
  local kind, key, token = ARGV[at], KEYS[tonumber(ARGV[at + 1])], ARGV[at + 2]
  local result
  if kind == 'a' then
    result, at = add(key, token, at + 3)
  else
    at = at + 3
    local held = redis.call('GET', key)
    if kind == 'r' and held then
      result = {'held', held}
    else
      if kind == 'r' then
        redis.call('SET', key, 'p' .. token, 'PX', ARGV[4])
      elseif held == 'p' .. token then
        redis.call('DEL', key)
      end
      result = {'ok'}
    end
  end
  results[#results + 1] = result
end
return results
"""
_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest().encode("ascii")


class BatchFailed(Exception):
    """The batch an op was in failed; ``transient`` failures are worth a retry (503)."""

    def __init__(self, detail: str, transient: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.transient = transient


class Op:
    """One step of one request: ``kind`` (b"r", b"x" or b"a"), its scope key, the rest of
    its arguments, the bytes they weigh, and the future its answer goes to (None: nobody
    waits for it)."""

    __slots__ = ("kind", "key", "args", "size", "future", "queued_at")

    def __init__(self, kind: bytes, key: bytes | None, args: list[Any], size: int,
                 future: asyncio.Future[Any] | None) -> None:
        self.kind = kind
        self.key = key
        self.args = args
        self.size = size
        self.future = future
        self.queued_at = time.monotonic()


class Batcher:
    """Runs ops in batches on one connection to Redis, ``MAX_IN_FLIGHT`` at a time.

    Every op is answered (or failed) within ``timeout`` of being submitted: a batch's
    deadline is its oldest op's.
    """

    def __init__(self, address: RedisAddress, stream: bytes, timeout: float, maxlen: int, ttl: int,
                 lease_ms: int) -> None:
        self._loop = asyncio.get_running_loop()  # once: each call costs a getpid() in CPython 3.11
        self._address = address
        self._stream = stream
        self._timeout = timeout
        self._fixed = (maxlen, ttl, lease_ms)
        self._queue: deque[Op] = deque()
        self._runners: set[asyncio.Task[None]] = set()
        #: a runner was started and has not taken its first batch yet (it will take what
        #: is queued meanwhile, so no other is needed)
        self._starting = False
        self._connection: RedisConnection | None = None
        self._connecting: asyncio.Future[RedisConnection] | None = None
        self._closed = False
        #: batches sent, for stats
        self.batches = 0

    def submit(self, op: Op) -> None:
        self._queue.append(op)
        if not self._starting and len(self._runners) < MAX_IN_FLIGHT:
            # a runner's first step comes after the callbacks already due, so the ops
            # submitted on this turn of the loop go together
            self._starting = True
            self._runners.add(self._loop.create_task(self._run()))

    async def _run(self) -> None:
        self._starting = False
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._execute(batch)
        finally:
            # at once, not in a done callback: until then submit would count this runner
            # as busy, and an op could be left queued with no runner to take it
            self._runners.discard(asyncio.current_task())

    def _take(self) -> list[Op]:
        batch: list[Op] = []
        size = 0
        queue = self._queue
        while queue and (not batch or size + queue[0].size <= MAX_BATCH_BYTES):
            op = queue.popleft()
            if op.future is not None and op.future.cancelled():
                continue
            batch.append(op)
            size += op.size
        return batch

    async def _execute(self, batch: list[Op]) -> None:
        started = time.monotonic()
        left = batch[0].queued_at + self._timeout - started
        try:
            if self._closed:
                raise BatchFailed("the sink is closed", True)
            if left <= 0:
                raise BatchFailed(f"Redis did not answer within {self._timeout:g}s", True)
            # Redis must begin the script within SCRIPT_SHARE of the oldest op's timeout
            deadline_ms = int((time.time() + left - self._timeout * (1 - SCRIPT_SHARE)) * 1000)
            keys, args = self._arguments(batch, deadline_ms)
            large = any(op.size >= LARGE for op in batch)
            connection = self._connection
            try:
                async with asyncio.timeout(left):
                    if connection is None or connection.closed:
                        connection = None
                        connection = await self._connect()
                    answer = await self._call(connection, keys, args, large)
            except TimeoutError:
                raise self._broken(connection, f"Redis did not answer within {self._timeout:g}s") from None
            except OSError as exc:  # ConnectionError included
                raise self._broken(connection, f"Redis is unavailable: {exc}") from None
            results = self._results(answer, len(batch))
        except BatchFailed as failed:
            for op in batch:
                if op.future is not None and not op.future.done():
                    op.future.set_exception(BatchFailed(failed.detail, failed.transient))
            return
        for op, result in zip(batch, results):
            if op.future is not None and not op.future.done():
                op.future.set_result(result)

    def _arguments(self, batch: list[Op], deadline_ms: int) -> tuple[list[bytes], list[Any]]:
        keys = [self._stream]
        args: list[Any] = [deadline_ms, *self._fixed]
        for op in batch:
            if op.key is None:
                args += (op.kind, 0)
            else:
                keys.append(op.key)
                args += (op.kind, len(keys))
            args += op.args
        return keys, args

    async def _call(self, connection: RedisConnection, keys: list[bytes], args: list[Any], large: bool) -> Any:
        self.batches += 1
        (answer,) = connection.call(self._pack((b"EVALSHA", _SHA, len(keys), *keys, *args), large))
        answer = await answer
        if isinstance(answer, ReplyError) and str(answer).startswith("NOSCRIPT"):
            # a Redis that restarted or flushed its scripts: nothing ran, send it whole
            (answer,) = connection.call(self._pack((b"EVAL", SCRIPT, len(keys), *keys, *args), large))
            answer = await answer
        return answer

    async def _connect(self) -> RedisConnection:
        """A new connection, shared by the runners that need one at the same time."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(connect(self._address))
            self._connecting.add_done_callback(self._connected)
        # shielded: a runner that gives up must not cut the others' connection short
        return await asyncio.shield(self._connecting)

    def _connected(self, connecting: asyncio.Future[RedisConnection]) -> None:
        self._connecting = None
        if not connecting.cancelled() and connecting.exception() is None:
            self._connection = connecting.result()

    @staticmethod
    def _pack(parts: tuple[Part, ...], large: bool) -> bytes | list[bytes]:
        return pack_large(parts) if large else pack(*parts)

    def _broken(self, connection: RedisConnection | None, detail: str) -> BatchFailed:
        """The batch's connection is in an unknown state (an answer may still come): drop it."""
        if connection is not None:
            connection.close()
            if self._connection is connection:
                self._connection = None
        return BatchFailed(detail, True)

    @staticmethod
    def _results(answer: Any, ops: int) -> list[Any]:
        if isinstance(answer, ReplyError):
            message = str(answer)
            transient = message.encode("utf-8", "replace").startswith(_TRANSIENT)
            raise BatchFailed(f"Redis refused the script: {message}", transient)
        if answer == b"late":
            raise BatchFailed("Redis began the script after its deadline (stalled, or its clock is ahead "
                              "of relay's): nothing was added", True)
        if not isinstance(answer, list) or len(answer) != ops:
            raise BatchFailed(f"Redis answered the script with {answer!r:.100}", False)
        return answer

    async def close(self) -> None:
        """Let the batches in flight end; fail what is queued; close the connection."""
        self._closed = True
        if self._runners:
            await asyncio.wait(self._runners)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
