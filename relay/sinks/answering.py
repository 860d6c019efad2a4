"""A sink that reads the request body and answers it itself (relay's own endpoints that take one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Receipt, SinkSlots

__all__ = ["AnsweringSink", "Respond"]

#: answers one request from its whole body (bounded by the flow's max_body)
Respond = Callable[[Request, bytes, Reply], Awaitable[None]]


class AnsweringSink:
    """One delivery per request; ``respond`` gets the body once it is all read."""

    remembers_keys = False
    stopped = False

    def __init__(self, name: str, respond: Respond) -> None:
        self.name = name
        self.slots = SinkSlots(name, 1 << 30)  # answered by relay itself: no limit of its own
        self._respond = respond

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> None:  # fmt: skip
        return None  # delivered the general way, which reads the body

    def open(self, request: Request, answers: bool, reply: Reply | None) -> _Delivery:
        return _Delivery(request, self._respond)

    async def close(self) -> None:
        pass


class _Delivery:
    stopped = False

    def __init__(self, request: Request, respond: Respond) -> None:
        self._request = request
        self._respond = respond
        self._body = bytearray()

    async def write(self, data: bytes) -> None:
        self._body += data

    async def finish(self) -> Receipt:
        return {}

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        await self._respond(self._request, bytes(self._body), reply)

    def abort(self) -> None:
        pass
