"""Writing one response back to the client.

A sink hands relay the upstream's answer either whole (``send_whole``: relay holds every
byte, so it may promise a Content-Length) or as a stream (``begin``/``write``/``end``:
chunked to HTTP/1.1 clients, close-delimited to HTTP/1.0 ones). relay never announces
a Content-Length it does not already hold, because a short body behind a Content-Length
leaves lighttpd's client hanging; a stream that breaks is cut off without its last
chunk, which every client recognises as truncation.

A held reply (``hold``, with ``audit.commit = "before-answer"``) keeps what it would send
until ``release``: the answer waits for its audit record, and is replaced (``withdraw``)
when that record cannot be written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Protocol

from relay.errors import RelayError
from relay.fastpath import LAST_CHUNK, encode_chunk
from relay.responses import error_response, status_line


class Producer(Protocol):
    """Whatever feeds the response (an upstream connection); paused when the client is slow."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ReplyState(IntEnum):
    NOT_STARTED = 0
    STREAMING = 1
    DONE = 2
    ABORTED = 3


# The members as module globals: an attribute lookup on an Enum class costs ≈ 0.1 µs in
# CPython 3.11, and the request path makes dozens of them.
NOT_STARTED, STREAMING, DONE, ABORTED = ReplyState

#: the states a reply may move to from each (by index), the rules ``Reply._enter`` holds it
#: to: once done or aborted it never sends again, except that an answer withdrawn because
#: its audit record could not be written starts over (to answer the 503 instead)
_NEXT = (
    frozenset((STREAMING, DONE, ABORTED)),     # NOT_STARTED
    frozenset((DONE, ABORTED, NOT_STARTED)),   # STREAMING
    frozenset((ABORTED, NOT_STARTED)),         # DONE
    frozenset((ABORTED, NOT_STARTED)),         # ABORTED
)


_NO_BODY_STATUSES = frozenset((204, 304))
#: a whole answer with a body up to this size leaves in one piece, joined here: a writev of
#: its half-dozen small pieces costs more than the copy (larger bodies go as they are)
_JOIN_BELOW = 16 * 1024


class Reply:
    """The response half of one exchange."""

    __slots__ = (
        "_transport", "request_id", "_rid_header", "_head_only", "_http10",
        "keep_alive", "state", "started", "status", "bytes_out", "producer", "_client_paused",
        "held", "_on_stream", "_sized", "_on_release",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        request_id: str,
        *,
        head_only: bool,
        http10: bool,
        keep_alive: bool,
        client_paused: bool,
    ) -> None:
        self._transport = transport
        self.request_id = request_id
        self._rid_header = b"X-Relay-Request-Id: " + request_id.encode("ascii") + b"\r\n"
        self._head_only = head_only
        self._http10 = http10
        self.keep_alive = keep_alive
        #: changed only by ``_enter``
        self.state = NOT_STARTED
        #: something was sent (state is no longer NOT_STARTED): a plain attribute, as it is
        #: read for every piece of an answer
        self.started = False
        self.status = 0
        self.bytes_out = 0
        self.producer: Producer | None = None
        self._client_paused = client_paused
        #: what was sent while the reply is held, in order; None when not held
        self.held: list[bytes] | None = None
        self._on_stream: Callable[[], None] | None = None
        #: the streamed body is framed by a Content-Length (``begin_sized``), not chunked
        self._sized = False
        #: told once what is held has gone out (see ``when_released``)
        self._on_release: Callable[[], None] | None = None

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The client's transport (for a file sent past it with sendfile)."""
        return self._transport

    @property
    def client_is_paused(self) -> bool:
        return self._client_paused

    def _enter(self, state: ReplyState) -> None:
        """The one place the reply's state changes, along ``_NEXT`` only."""
        assert state in _NEXT[self.state], f"reply {self.request_id}: {self.state.name} -> {state.name}"
        self.state = state
        self.started = state != NOT_STARTED

    def _connection_header(self) -> bytes:
        if not self.keep_alive:
            return b"Connection: close\r\n"
        return b"Connection: keep-alive\r\n" if self._http10 else b""

    def send_whole(self, status: int, headers: bytes, body: Sequence[bytes], length: int) -> None:
        """Send a response whose body (``length`` bytes, in ``body``) relay already holds.

        For HEAD, ``body`` is empty and ``length`` is the upstream's Content-Length.
        """
        self.status = status
        if status in _NO_BODY_STATUSES:
            framing = b""
            body = ()
        else:
            framing = b"Content-Length: %d\r\n" % length
            if self._head_only:
                body = ()
        self._enter(DONE)
        parts = (status_line(status), headers, self._rid_header, framing, self._connection_header(), b"\r\n", *body)
        self._send((b"".join(parts),) if not body or length < _JOIN_BELOW else parts)
        self.bytes_out = length if body else 0

    def begin(self, status: int, headers: bytes) -> None:
        """Start a streamed response; ``write`` the body, then ``end``."""
        self.status = status
        if self._http10:
            # HTTP/1.0 has no chunked encoding: the end of the body is the end of the connection.
            self.keep_alive = False
            framing = b""
        else:
            framing = b"Transfer-Encoding: chunked\r\n"
        self._enter(STREAMING)
        self._send((b"".join((status_line(status), headers, self._rid_header, framing, self._connection_header(),
                              b"\r\n")),))
        if self.held is not None and self._on_stream is not None:
            self._on_stream()

    def begin_sized(self, status: int, headers: bytes, length: int) -> None:
        """Start a response of ``length`` body bytes that the caller sends to the socket
        itself (a file, with ``sendfile``), once ``when_released`` says the head is out;
        it counts them with ``sent`` and calls ``end``. For HEAD nothing follows the head."""
        self.status = status
        self._sized = True
        self._enter(STREAMING)
        self._send((b"".join((status_line(status), headers, self._rid_header, b"Content-Length: %d\r\n" % length,
                              self._connection_header(), b"\r\n")),))
        if self.held is not None and self._on_stream is not None:
            self._on_stream()

    def when_released(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once nothing sent is held any more: at once when not held,
        else when the audit record is written (or the answer withdrawn: then ``state`` is
        no longer STREAMING)."""
        if self.held is None:
            callback()
        else:
            self._on_release = callback

    def sent(self, count: int) -> None:
        """``count`` more body bytes went to the socket past the transport (``begin_sized``)."""
        self.bytes_out += count

    def write(self, data: bytes) -> None:
        if not data or self.state != STREAMING:
            return
        self.bytes_out += len(data)
        self._send((data,) if self._http10 else encode_chunk(data))

    def end(self) -> None:
        if self.state == STREAMING:
            self._enter(DONE)
            if not self._http10 and not self._sized:
                self._send((LAST_CHUNK,))

    def fail(self, err: RelayError) -> None:
        """Answer with ``err`` if nothing was sent yet; otherwise cut the response off."""
        if self.state == NOT_STARTED:
            if err.close_connection:
                self.keep_alive = False
            self.status = err.status
            self._enter(DONE)
            self._send((error_response(err, self.request_id, self.keep_alive, head_only=self._head_only),))
        elif self.state == STREAMING:
            self.abort()

    def _send(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` in one call, unless the client has gone (then there is no one to tell)."""
        held = self.held
        if held is not None:
            held += parts
            return
        if self._transport.is_closing():
            self.keep_alive = False
            return
        self._transport.writelines(parts)

    # --- held until the audit record is written ------------------------------------------

    def hold(self, on_stream: Callable[[], None] | None) -> None:
        """Keep everything sent until ``release``; ``on_stream`` is called as a streamed
        answer begins (its head is held, and what follows until the release)."""
        self.held = []
        self._on_stream = on_stream

    def release(self) -> None:
        """Send what was held, and from now on send at once."""
        held, self.held = self.held, None
        # the exchange's callback is not needed any more, and keeping it would leave the
        # exchange and its reply in a cycle for the garbage collector to find
        self._on_stream = None
        if held:
            self._send(held)
        released, self._on_release = self._on_release, None
        if released is not None:
            released()

    def withdraw(self, err: RelayError) -> None:
        """Drop what was held and answer ``err`` instead, closing the connection after it.
        What a streamed answer's producer still writes goes nowhere."""
        self.held = None
        self._on_stream = None
        self._enter(NOT_STARTED)
        self.keep_alive = False
        self.bytes_out = 0
        self.fail(err)

    def abort(self) -> None:
        """Close the client connection mid-response so the truncation is visible."""
        self.keep_alive = False
        self._enter(ABORTED)
        self._transport.close()

    # --- back-pressure from the client socket -------------------------------------------

    def set_producer(self, producer: Producer | None) -> None:
        self.producer = producer
        if producer is not None and self._client_paused:
            producer.pause_reading()

    def client_paused(self) -> None:
        self._client_paused = True
        if self.producer is not None:
            self.producer.pause_reading()

    def client_resumed(self) -> None:
        self._client_paused = False
        if self.producer is not None:
            self.producer.resume_reading()
