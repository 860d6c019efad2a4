"""Sinks that answer every request with a document of relay's own (its endpoints): the
same one always, or one rendered for each answer (relay's JWKS, as its keys rotate)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Receipt, SinkSlots


class StaticSink:
    """Serves ``body`` as ``content_type``; takes no request body."""

    remembers_keys = False

    def __init__(self, name: str, body: bytes, content_type: bytes, max_age: int = 300) -> None:
        self.name = name
        self.slots = SinkSlots(name, 1 << 30)  # a constant answer: no limit of its own
        self._headers = b"Content-Type: " + content_type + b"\r\nCache-Control: max-age=%d\r\n" % max_age
        self._body = body

    def document(self) -> bytes:
        return self._body

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
        body = self.document()
        reply.send_whole(200, self._headers, (body,), len(body))

    def abort(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RenderedSink(StaticSink):
    """Serves what ``render()`` returns at each answer."""

    def __init__(self, name: str, render: Callable[[], bytes], content_type: bytes, max_age: int) -> None:
        super().__init__(name, b"", content_type, max_age)
        self._render = render

    def document(self) -> bytes:
        return self._render()
