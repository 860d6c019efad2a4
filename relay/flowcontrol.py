"""Back-pressure between a client connection and whatever consumes its request body.

``ReadGate`` pauses and resumes a transport's reading; several parties may want it paused
at once (a full body buffer, a queue of pipelined requests), so it counts them and
only resumes when the last one lets go. ``RequestBody`` is the bounded buffer between
the protocol (which feeds it from ``on_body``) and the sink (which awaits ``read()``):
above ``HIGH_WATER`` buffered bytes it pauses the client, below ``LOW_WATER`` it resumes,
so memory per request stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from relay.errors import PayloadTooLarge

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class ClientGone(Exception):
    """The client closed or reset the connection before its body was complete."""


class ReadGate:
    """Counted, idempotent pause/resume of one transport's reading.

    It also keeps the time reading stayed paused, so the client's deadlines can leave out
    the time relay itself was not reading (``client_clock``).
    """

    __slots__ = ("_transport", "_pausers", "_time", "_paused_at", "paused_for")

    def __init__(self, transport: asyncio.BaseTransport, time: Callable[[], float]) -> None:
        self._transport = transport
        self._pausers: set[str] = set()
        self._time = time
        self._paused_at = 0.0
        #: seconds reading was paused, over the pauses that have ended
        self.paused_for = 0.0

    def pause(self, who: str) -> None:
        if not self._pausers:
            self._transport.pause_reading()  # type: ignore[attr-defined]
            self._paused_at = self._time()
        self._pausers.add(who)

    def resume(self, who: str) -> None:
        if who in self._pausers:
            self._pausers.discard(who)
            if not self._pausers:
                self._resumed()

    def release_all(self) -> None:
        """Resume reading whoever paused it (the connection is only drained from now on)."""
        if self._pausers:
            self._pausers.clear()
            self._resumed()
        elif not self._transport.is_closing():
            self._transport.resume_reading()  # type: ignore[attr-defined]

    def _resumed(self) -> None:
        self.paused_for += self._time() - self._paused_at
        if not self._transport.is_closing():
            self._transport.resume_reading()  # type: ignore[attr-defined]

    @property
    def paused(self) -> bool:
        return bool(self._pausers)

    def client_clock(self, now: float) -> float:
        """``now`` less all the time reading was paused: the time the client had to send."""
        if self._pausers:
            return self._paused_at - self.paused_for
        return now - self.paused_for


class RequestBody:
    """The streamed body of one request.

    ``read()`` returns the next piece, or ``b""`` once the whole body has been read.
    A request without a body is born complete. ``max_bytes`` is enforced as bytes
    arrive, so a chunked body over the flow's limit fails with 413 without being
    buffered.
    """

    __slots__ = (
        "_gate", "_chunks", "_buffered", "_eof", "_error", "_waiter",
        "received", "consumed", "max_bytes", "_on_first_read",
    )

    def __init__(
        self,
        gate: ReadGate | None,
        max_bytes: int,
        complete: bool,
        on_first_read: Callable[[], None] | None = None,
    ) -> None:
        self._gate = gate
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = complete
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.received = 0
        self.consumed = 0
        self.max_bytes = max_bytes
        self._on_first_read = on_first_read

    @property
    def complete(self) -> bool:
        """Every byte of the body has arrived from the client."""
        return self._eof

    @property
    def drained(self) -> bool:
        """Every byte has arrived and been handed to the consumer."""
        return self._eof and not self._chunks

    # --- producer side (the protocol) -------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_bytes:
            raise PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._gate is not None:
            self._gate.pause("body")
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- consumer side (a sink) -------------------------------------------------------

    def peek_whole(self) -> bytes:
        """A complete body's bytes, all of them, without reading them (see ``take_whole``):
        what a sink taking the body at once looks at before it decides to."""
        chunks = self._chunks
        if len(chunks) > 1:
            whole = b"".join(chunks)
            chunks.clear()
            chunks.append(whole)
        return chunks[0] if chunks else b""

    def take_whole(self) -> None:
        """Read the complete body ``peek_whole`` showed, all at once."""
        while self._chunks:
            self.consumed += len(self._chunks.popleft())
        self._buffered = 0
        if self._gate is not None:
            self._gate.resume("body")

    async def read(self) -> bytes:
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()
        while True:
            # a failed body is failed at once, even with pieces still queued: they belong
            # to a request that will not complete, and must not be delivered anywhere
            if self._error is not None:
                raise self._error
            if self._chunks:
                break
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = self._chunks.popleft()
        self._buffered -= len(data)
        self.consumed += len(data)
        if self._buffered < LOW_WATER and self._gate is not None:
            self._gate.resume("body")
        return data


#: the body of every request that has none: nothing is ever fed into it, ``fail`` is a
#: no-op on a complete body and ``read`` returns b"" at once, so one instance serves all
NO_BODY = RequestBody(None, 0, complete=True)

__all__ = ["ClientGone", "HIGH_WATER", "LOW_WATER", "NO_BODY", "ReadGate", "RequestBody"]
