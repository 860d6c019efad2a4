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
is held in memory meanwhile (the flow's ``max_body`` bounds it); a small body without an
Idempotency-Key read whole before its exchange began is added from callbacks, without a
task (``QuickAdd``). Then all of the request's
entries are added (XADD, with ``MAXLEN ~ maxlen`` when ``maxlen`` is set) as one atomic
step: no other client's entry falls between them, and a request that fails adds none.
The receipt is ``{"stream", "ids": [first, last], "records"}``, so ``XRANGE stream first
last`` returns exactly the request's entries (until trimmed); a record-mode body without
records adds nothing and gets ``"ids": []``. Concurrent requests' steps travel together,
one Lua call per batch on one connection (``relay.sinks._redis_batch``); each request is
answered once its own entries are acknowledged.

Idempotency (``relay.idempotency``): a request with an ``Idempotency-Key`` reserves its
scope in Redis, in ``STREAM:idempotency:FLOW:SCOPE`` (SCOPE the hex digest of flow,
caller and key), as soon as it starts; every worker sees it. The reservation is held for
at most ``KEY_LEASE`` seconds (relayd may die mid-request); meanwhile another request in
the scope gets 409. The step that adds the entries settles the scope, atomically, with
the request's fingerprint and receipt, for ``idempotency_ttl``: a retry gets the receipt
(nothing added), another request under the key 422. A request that fails releases its
reservation. Should a reservation have lapsed, the adding step still decides alone: it
adds only to a scope that is free or held by its own request.

Failures: every request's steps (connecting included) must be answered within ``timeout``
of being handed over, else the client gets 503 with Retry-After, whether Redis refused,
reset, was stopped or is slow. A stalled Redis may still run a script it received after
relay gave up, so the script carries a deadline and adds nothing once ``SCRIPT_SHARE`` of
``timeout`` has passed by Redis's clock (which must agree with relay's to well within the
rest of ``timeout``). So a 503 means nothing was added, unless Redis began the script in
time but took longer than the rest of ``timeout`` to run it and answer: a retry with an
Idempotency-Key is always safe. Errors Redis answers are 502 (the key holds another type,
...), except the transient ones (out of memory, loading, busy script, read-only replica),
which are 503. Failures are counted in ``stats()`` and logged, at most one line per
``_LOG_EVERY`` seconds per sink. Nothing is retried: a failed call is the client's 503,
and the client decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from relay.config import RedisStreamSinkConfig
from relay.errors import BadGateway, IdempotencyKeyInFlight, RelayError, ServiceUnavailable
from relay.flowcontrol import NO_BODY
from relay.idempotency import Claim
from relay.reply import Reply
from relay.request import Request
from relay.sinks._redis_batch import BatchFailed, Batcher, Op
from relay.sinks._resp import RedisAddress
from relay.sinks._staging import NdjsonChecker, check_whole
from relay.sinks.base import Receipt, SinkSlots, send_receipt

__all__ = ["KEY_LEASE", "RedisStreamSink"]

log = logging.getLogger("relay.sinks.redis_stream")

#: seconds a request in flight holds its Idempotency-Key scope at most: short, since the
#: retries of a request whose relayd died get 409 meanwhile; a request that takes longer
#: loses only the early 409 for its duplicates (the adding step still adds at most once)
KEY_LEASE = 10.0
_LOG_EVERY = 10.0
#: what an entry costs in a batch besides its bytes (its fields, framing)
_ENTRY_COST = 64


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

    remembers_keys = True

    def __init__(self, config: RedisStreamSinkConfig) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.config = config
        self._loop = asyncio.get_running_loop()  # once: each call costs a getpid() in CPython 3.11
        self._stream = config.stream.encode("utf-8")
        self._stream_name = config.stream
        self._batcher = Batcher(RedisAddress.from_url(config.url), self._stream, config.timeout,
                                config.maxlen or 0, int(config.idempotency_ttl), int(KEY_LEASE * 1000))
        self._failures = _Failures(config.name)
        self._added = 0
        self._replays = 0

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> QuickAdd | None:
        """A small body read whole, without an Idempotency-Key: its entries added from
        callbacks; None (the general way) for a bad record, which that way names."""
        body = request.body
        if body is NO_BODY:
            return None
        data = body.peek_whole()
        records = None
        entries = [data]
        if self.config.entry == "record":
            checked = check_whole(data)
            if checked is None:
                return None
            records = checked[0]
            entries = data.split(b"\n")
            if not entries[-1]:
                entries.pop()
        body.take_whole()
        return QuickAdd(self, request, reply, entries, records, on_done)

    def open(self, request: Request, answers: bool, reply: Reply | None) -> RedisStreamDelivery:
        return RedisStreamDelivery(self, request)

    # --- the steps of a request ------------------------------------------------------

    def _scope_key(self, request: Request, claim: Claim) -> bytes:
        return b"%s:idempotency:%s:%s" % (self._stream, request.flow.name.encode("utf-8"), claim.scope.hex().encode())

    def reserve(self, request: Request, claim: Claim) -> asyncio.Future[Any]:
        """Hold ``claim``'s scope for ``request``: the future's answer is ``[b"ok"]``, or
        ``[b"held", value]`` when another request holds or settled it."""
        future = self._loop.create_future()
        self._batcher.submit(Op(b"r", self._scope_key(request, claim), [request.request_id], 0, future))
        return future

    def release(self, request: Request, claim: Claim) -> None:
        """Free the scope if ``request`` still holds it (nobody waits for the answer)."""
        self._batcher.submit(Op(b"x", self._scope_key(request, claim), [request.request_id], 0, None))

    async def add(self, request: Request, entries: list[bytes], claim: Claim | None) -> Receipt:
        """Add ``entries`` as one atomic step (settling ``claim``'s scope, if any); the
        receipt says which ids they got."""
        if not entries and claim is None:
            return {"stream": self._stream_name, "ids": [], "records": 0}
        added = self.submit_add(request, entries, claim)
        with contextlib.suppress(BatchFailed):  # the receipt raises it as the client's error
            await added
        return self.receipt(added, entries, claim)

    def submit_add(self, request: Request, entries: list[bytes], claim: Claim | None) -> asyncio.Future[Any]:
        """Hand ``entries`` to the batcher as one adding step; the future gets Redis's answer."""
        fields = [b"request_id", request.request_id, b"flow", request.flow.name]
        if request.identity is not None:
            fields += (b"subject", request.identity.subject)
        key, fingerprint = None, b""
        if claim is not None:
            fields += (b"idempotency_key", claim.key)
            key, fingerprint = self._scope_key(request, claim), claim.fingerprint
        size = sum(map(len, entries)) + _ENTRY_COST * len(entries)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._batcher.submit(Op(b"a", key, [request.request_id, fingerprint, len(fields) // 2, *fields,
                                            len(entries), *entries], size, future))
        return future

    def receipt(self, added: asyncio.Future[Any], entries: list[bytes], claim: Claim | None) -> Receipt:
        """The receipt of an adding step that is done (see ``submit_add``), or its client's error."""
        try:
            answer = added.result()
        except BatchFailed as failed:
            raise self.failure(failed) from None
        if answer[0] == b"added":
            self._added += len(entries)
            ids = [answer[1].decode("ascii"), answer[2].decode("ascii")] if entries else []
            return {"stream": self._stream_name, "ids": ids, "records": len(entries)}
        if answer[0] == b"held":
            assert claim is not None
            return self.replay(claim, answer[1])
        raise self._failures.record(BadGateway(f"Redis refused the entries: {answer[1].decode()}", self.name))

    def failure(self, failed: BatchFailed) -> RelayError:
        """The client's 503 (or 502) for an op whose batch failed; counted and logged."""
        err = (ServiceUnavailable(failed.detail, self.name, retry_after=1) if failed.transient
               else BadGateway(failed.detail, self.name))
        return self._failures.record(err)

    def replay(self, claim: Claim, held: bytes) -> Receipt:
        """The answer to ``claim`` from the value its scope holds: 409 while another request
        holds it, else the settled receipt (or 422, see ``Claim.replay``)."""
        if held[:1] != b"d":
            raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in flight")
        count, *ids = held[33:].decode("ascii").split(" ")
        receipt = claim.replay(held[1:33], {"stream": self._stream_name, "ids": ids, "records": int(count)})
        self._replays += 1
        return receipt

    def stats(self) -> dict[str, int]:
        """Counters: entries added, requests answered from an idempotency key, failures,
        batches sent to Redis."""
        return {"added": self._added, "replays": self._replays, "failures": self._failures.count,
                "batches": self._batcher.batches}

    async def close(self) -> None:
        await self._batcher.close()


class QuickAdd:
    """A small body's entries added from callbacks: answered once Redis acknowledged them."""

    __slots__ = ("_sink", "_request", "_reply", "_entries", "_records", "_on_done", "_added")

    retriable = False

    def __init__(self, sink: RedisStreamSink, request: Request, reply: Reply, entries: list[bytes],
                 records: int | None, on_done: Callable[[BaseException | None], None]) -> None:
        self._sink = sink
        self._request = request
        self._reply = reply
        self._entries = entries
        self._records = records
        self._on_done = on_done
        self._added = sink.submit_add(request, entries, None)
        self._added.add_done_callback(self._answer)

    def _answer(self, added: asyncio.Future[Any]) -> None:
        if added.cancelled():
            return  # aborted: the client went
        try:
            receipt = self._sink.receipt(added, self._entries, None)
        except RelayError as err:
            self._on_done(err)
            return
        send_receipt(self._reply, self._request, {self._sink.name: receipt}, self._records)
        self._on_done(None)

    def release(self) -> None:
        pass

    def abort(self) -> None:
        if not self._added.done():
            self._added.cancel()  # not sent, if its batch has not left yet


class RedisStreamDelivery:
    """One request's body, held until it is complete, then added to the stream."""

    __slots__ = ("_sink", "_request", "_checker", "_pieces", "_claim", "_reserving", "_held", "_holds")

    stopped = False  # a stream takes the whole body

    def __init__(self, sink: RedisStreamSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        self._checker = NdjsonChecker() if sink.config.entry == "record" else None
        self._pieces: list[bytes] = []
        self._claim = claim = request.claim
        #: the reservation of the claim's scope, until its answer is looked at
        self._reserving = None if claim is None else sink.reserve(request, claim)
        #: what the scope held when this request tried to reserve it (None: it was free)
        self._held: bytes | None = None
        #: this request may hold its scope (reserved, or not known to have failed to)
        self._holds = claim is not None

    async def write(self, data: bytes) -> None:
        if self._reserving is not None and self._reserving.done():
            await self._reserved()  # a 409 fails the request before the rest of the body
        if self._checker is not None:
            self._checker.feed(data)
        self._pieces.append(data)

    async def _reserved(self) -> None:
        """Look at the reservation's answer: 409 if another request is in flight."""
        reserving, self._reserving = self._reserving, None
        assert reserving is not None
        try:
            answer = await reserving
        except BatchFailed as failed:
            raise self._sink.failure(failed) from None
        if answer[0] == b"held":
            self._holds = False
            self._held = answer[1]
            if answer[1][:1] != b"d":
                raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in flight")

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
        claim = self._claim
        if claim is None:
            return await self._sink.add(self._request, entries, None)
        if self._reserving is not None:
            await self._reserved()
        if self._held is not None:
            return self._sink.replay(claim, self._held)
        receipt = await self._sink.add(self._request, entries, claim)
        self._holds = False
        return receipt

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        records = self._checker.records if self._checker is not None else None
        send_receipt(reply, self._request, receipts, records)

    def abort(self) -> None:
        self._pieces = []
        if self._holds:
            assert self._claim is not None
            self._holds = False
            # after the reservation in the ops' order, so it frees what that took (if it did)
            self._sink.release(self._request, self._claim)
        reserving = self._reserving
        if reserving is not None:
            if not reserving.done():
                reserving.cancel()  # not sent, if its batch has not left yet
            elif not reserving.cancelled():
                reserving.exception()  # its failure, if any, is this request's no more
