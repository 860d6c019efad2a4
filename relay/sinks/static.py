"""A sink that answers every request with the same document (relay's own endpoints)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Receipt, SinkSlots


class StaticSink:
    """Serves ``body`` as ``content_type``; takes no request body."""

    remembers_keys = False

    def __init__(self, name: str, body: bytes, content_type: bytes) -> None:
        self.name = name
        self.slots = SinkSlots(name, 1 << 30)  # a constant answer: no limit of its own
        self._headers = b"Content-Type: " + content_type + b"\r\nCache-Control: max-age=300\r\n"
        self._body = body

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> None:
        return None  # delivered the general way

    def open(self, request: Request, answers: bool, reply: Reply | None) -> StaticSink:
        return self

    # one instance serves as every request's delivery: there is no per-request state

    stopped = False

    async def write(self, data: bytes) -> None:
        pass

    async def finish(self) -> Receipt:
        return {}

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        reply.send_whole(200, self._headers, (self._body,), len(self._body))

    def abort(self) -> None:
        pass

    async def close(self) -> None:
        pass
