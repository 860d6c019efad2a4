"""The interfaces every sink implements, and the receipt answer non-HTTP sinks share.

A request reaches its sinks as one ``Delivery`` per sink. The exchange reads the body once
and writes each piece to every delivery (``write`` waits while a sink is slow, which is
what pauses the client); then it ``finish``-es them all, and only when every sink has
accepted does the flow's own sink ``answer`` the client. A failure anywhere ``abort``-s
the deliveries that are still open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    """A request a sink relays from callbacks alone (see ``Sink.relay_now``)."""

    @property
    def retriable(self) -> bool:
        """It failed before anything was sent (a stale pooled connection): try the general way."""
        ...

    def release(self) -> None:
        """After success: give the sink's resources back."""
        ...

    def abort(self) -> None: ...


class Answered:
    """The quick delivery of a request already answered whole: nothing is left to do."""

    retriable = False

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


ANSWERED = Answered()


class Sink(Protocol):
    """A destination for flows' data."""

    name: str
    slots: SinkSlots
    #: the sink keeps Idempotency-Keys itself (and needs each keyed request's ``claim``);
    #: an HTTP sink passes the key on to its upstream instead
    remembers_keys: bool

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> QuickDelivery | None:
        """Relay a request whose body is complete (none, or read whole before the exchange
        began: ``RequestBody.peek_whole``), as the flow's only sink, without a task — when
        the sink can take it at once (the common case, and the cheapest); else None, with
        nothing done and the body left unread, for the general path. ``on_done`` is called
        once, never from inside ``relay_now``: with None when the answer went to the
        client, else with the failure."""
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
