"""The interface every sink implements."""

from __future__ import annotations

from typing import Protocol

from relay.reply import Reply
from relay.request import Request


class Sink(Protocol):
    """A destination for a flow's data.

    ``relay`` streams ``request.body`` into the destination and answers the client through
    ``reply``. It raises a ``RelayError`` (502/503/504 family) when the destination fails
    before the answer started; after that it aborts the reply instead.
    """

    name: str

    async def relay(self, request: Request, reply: Reply) -> None: ...

    async def close(self) -> None: ...
