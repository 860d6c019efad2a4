"""The interfaces every sink implements, and the receipt answer non-HTTP sinks share.

A request reaches its sinks as one ``Delivery`` per sink. The exchange reads the body once
and writes each piece to every delivery (``write`` waits while a sink is slow, which is
what pauses the client); then it ``finish``-es them all, and only when every sink has
accepted does the flow's own sink ``answer`` the client. A failure anywhere ``abort``-s
the deliveries that are still open.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import orjson

from relay.errors import ServiceUnavailable
from relay.reply import Reply
from relay.request import Request

#: what a sink reports about one accepted request (file and offset, stream ids, status)
Receipt = dict[str, object]

_RECEIPT_HEADERS = b"Content-Type: application/json\r\n"


class Delivery(Protocol):
    """One request's body on its way into one sink."""

    @property
    def stopped(self) -> bool:
        """The sink wants no more of the body (an upstream answered before reading it all)."""
        ...

    async def write(self, data: bytes) -> None:
        """Take the next piece of the body; returns when the sink can take more."""
        ...

    async def finish(self) -> Receipt:
        """The body is complete: wait until the sink has accepted it (or raise)."""
        ...

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        """Answer the client (called on the flow's own sink once every sink accepted)."""
        ...

    def abort(self) -> None:
        """The request failed: nothing of it may be kept. Safe to call more than once."""
        ...


class QuickDelivery(Protocol):
    """A bodiless request a sink relays from callbacks alone (see ``Sink.relay_now``)."""

    @property
    def retriable(self) -> bool:
        """It failed before anything was sent (a stale pooled connection): try the general way."""
        ...

    def release(self) -> None:
        """After success: give the sink's resources back."""
        ...

    def abort(self) -> None: ...


class Sink(Protocol):
    """A destination for flows' data."""

    name: str
    slots: SinkSlots

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> QuickDelivery | None:
        """Relay a bodiless request, as the flow's only sink, without a task — when the sink
        can start at once (the common case, and the cheapest); else None. ``on_done`` is
        called once: with None when the answer went to the client, else with the failure."""
        ...

    def open(self, request: Request, answers: bool, reply: Reply | None) -> Delivery:
        """A delivery for ``request``.

        ``answers``: this sink's answer goes to the client. ``reply`` is given when it is
        also the flow's only sink, so it may answer as soon as it likes (an upstream
        streaming its answer while the body still flows); else it answers in ``answer``.
        """
        ...

    async def close(self) -> None: ...


def send_receipt(reply: Reply, request: Request, receipts: Mapping[str, Receipt], records: object) -> None:
    """Answer 200 with relay's JSON receipt: what was stored, and where, for every sink."""
    body: dict[str, object] = {"request_id": request.request_id, "bytes": request.body.consumed}
    if records is not None:
        body["records"] = records
    body["sinks"] = dict(receipts)
    answer = orjson.dumps(body)
    reply.send_whole(200, _RECEIPT_HEADERS, (answer,), len(answer))


# --- the in-flight limit every sink has --------------------------------------------------


class SinkSlots:
    """How many requests a sink may hold at once (its ``max_in_flight``).

    The exchange ``take``s a slot of every sink of its flow before delivering and gives
    them back when it is done. Past the limit ``take`` raises ``ServiceUnavailable`` (503,
    ``Retry-After: 1``) at once rather than queueing, so a slow sink holds at most ``limit``
    requests and never stalls flows that do not use it. Per process (each worker its own).
    """

    __slots__ = ("name", "limit", "taken")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.taken = 0

    def take(self) -> None:
        if not self.try_take():
            raise ServiceUnavailable(f"sink has {self.limit} requests in flight", self.name, retry_after=1)

    def try_take(self) -> bool:
        """Take a slot if one is free; False (nothing taken) past the limit."""
        if self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1


# --- idempotency ------------------------------------------------------------------------


def idempotency_scope(request: Request) -> tuple[bytes, bytes] | None:
    """``(flow name, Idempotency-Key)`` when the client sent a key: keys are per flow."""
    key = request.headers.idempotency_key
    if not key:
        return None
    return request.flow.name.encode("ascii"), key


class RecentReceipts:
    """Receipts of recently accepted requests by Idempotency-Key, for sinks with no store.

    Holds at most ``capacity`` keys, each for ``ttl`` seconds (the oldest are forgotten
    first). It lives in one process's memory: it is lost on restart and not shared between
    the workers of a multi-process relayd, so a retry after a restart, or one that another
    worker serves, is accepted again. Keys are kept as SHA-256 digests, so a long key costs
    no more memory than a short one.
    """

    def __init__(self, capacity: int, ttl: float) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._done: OrderedDict[bytes, tuple[float, Receipt]] = OrderedDict()  # oldest first
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        #: requests answered with a stored receipt instead of being accepted again
        self.replays = 0

    async def once(self, scope: tuple[bytes, bytes], accept: Callable[[], Awaitable[Receipt]]) -> Receipt:
        """The receipt stored for ``scope``; else ``accept()``'s, stored if it succeeds.

        A request whose key is being accepted right now waits for that one to end, then
        replays its receipt (or, if it failed, accepts its own body).
        """
        flow, key = scope
        digest = hashlib.sha256(b"%d:%s:%s" % (len(flow), flow, key)).digest()
        while True:
            stored = self._lookup(digest)
            if stored is not None:
                self.replays += 1
                return stored
            pending = self._pending.get(digest)
            if pending is None:
                break
            await asyncio.shield(pending)  # our cancellation must not fail the other request
        self._pending[digest] = done = asyncio.get_running_loop().create_future()
        try:
            receipt = await accept()
            self._store(digest, receipt)
            return receipt
        finally:
            del self._pending[digest]
            done.set_result(None)

    def _lookup(self, digest: bytes) -> Receipt | None:
        entry = self._done.get(digest)
        if entry is None:
            return None
        stored_at, receipt = entry
        if time.monotonic() - stored_at > self._ttl:
            del self._done[digest]
            return None
        return receipt

    def _store(self, digest: bytes, receipt: Receipt) -> None:
        now = time.monotonic()
        self._done[digest] = (now, receipt)
        self._done.move_to_end(digest)
        # entries are in storing order, so the expired and the surplus are at the front
        while self._done:
            oldest_at, _ = next(iter(self._done.values()))
            if len(self._done) <= self._capacity and now - oldest_at <= self._ttl:
                break
            self._done.popitem(last=False)
