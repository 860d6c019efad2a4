"""The interfaces every sink implements, and the receipt answer non-HTTP sinks share.

A request reaches its sinks as one ``Delivery`` per sink. The exchange reads the body once
and writes each piece to every delivery (``write`` waits while a sink is slow, which is
what pauses the client); then it ``finish``-es them all, and only when every sink has
accepted does the flow's own sink ``answer`` the client. A failure anywhere ``abort``-s
the deliveries that are still open.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import orjson

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


class Sink(Protocol):
    """A destination for flows' data."""

    name: str

    async def open(self, request: Request, answers: bool, reply: Reply | None) -> Delivery:
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
