"""A pooled keep-alive HTTP/1.1 client connection to one upstream.

``UpstreamConnection`` carries one exchange at a time: ``begin`` sends a request head
(with the first piece of its body, in one write), ``send`` the rest, and the answer is
parsed as it arrives. The answer is *held* until someone claims it: ``attach(reply)``
passes it to the client (whole if it is complete by then, so it can keep its
Content-Length, streamed otherwise) and returns a future; ``pass_on(reply, on_done)`` does
the same with a callback, for requests relayed without a task; ``discard()`` reads it to
the end and drops it (a tee's answer). While held, at most ``HOLD_BYTES`` of it are
buffered before the upstream is paused. Timeouts use the shared deadline sweep, not
per-request timers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum

import httptools

from relay.config import HttpSinkConfig
from relay.errors import BadGateway, BadRequest, GatewayTimeout, RelayError
from relay.fastpath import LAST_CHUNK, WHOLE_HEADS, HeaderRules, encode_chunk, scan_headers, whole_answer
from relay.reply import Reply
from relay.timers import Deadlines

#: response headers relay does not pass on (beyond the hop-by-hop set scan_headers drops):
#: the ones that make a front server answer with a file of its own choosing instead of the
#: body (lighttpd's X-Sendfile family, nginx's X-Accel-*), so an upstream can never make
#: lighttpd read what it likes; an upstream's names with `_` pass, as nginx's proxy passes them
_RESPONSE_DROP = HeaderRules(
    (b"X-Sendfile", b"X-Sendfile2", b"X-LIGHTTPD-send-file"), (b"X-Accel-",), underscores=True)
#: bytes of an unclaimed answer buffered before the upstream is paused
HOLD_BYTES = 256 * 1024


class Stale(Exception):
    """A reused connection died before answering: the request may be retried elsewhere."""


class ConnState(IntEnum):
    IDLE = 0        # in the pool, or just connected
    EXCHANGE = 1    # a request is in flight
    CLOSED = 2


# The members as module globals: an attribute lookup on an Enum class costs ≈ 0.1 µs in
# CPython 3.11, and the request path makes dozens of them.
IDLE, EXCHANGE, CLOSED = ConnState

#: the states a connection may move to from each (by index), as ``_enter`` holds it to:
#: one exchange at a time, and nothing after closing
_NEXT = (
    frozenset((EXCHANGE, CLOSED)),  # IDLE
    frozenset((IDLE, CLOSED)),      # EXCHANGE
    frozenset((CLOSED,)),           # CLOSED (closed by relay, then lost)
)


class Claim(IntEnum):
    HELD = 0        # nobody has claimed the answer yet
    ATTACHED = 1    # passed on to a client reply
    DISCARDED = 2   # read to the end and dropped


# module globals, as ConnState's are
HELD, ATTACHED, DISCARDED = Claim


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._timeout = pool.config.timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        #: changed only by ``_enter``
        self.state = IDLE
        self.deadline = 0.0
        #: created only for someone who waits for the answer's head (see answer_head)
        self._head_waiter: asyncio.Future[int] | None = None
        #: whoever claimed the answer, told once it is all passed on (None) or failed
        self._on_done: Callable[[BaseException | None], None] | None = None
        #: why the current exchange failed, for a claim or a drain that comes later
        self._failure: BaseException | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._head_only = False
        self._got_bytes = False
        self._reusable = True
        #: served an earlier request: the upstream may have closed it meanwhile
        self.reused = False
        self._reset_answer()

    def _enter(self, state: ConnState) -> None:
        """The one place the connection's state changes, along ``_NEXT`` only."""
        assert state in _NEXT[self.state], f"upstream {self._pool.name}: {self.state.name} -> {state.name}"
        self.state = state

    def _reset_answer(self) -> None:
        self._claim = HELD
        self._reply: Reply | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._informational = False
        self._response_headers = b""
        self._content_length = -1
        self._until_close = False
        self._pieces: list[bytes] = []
        self._held = 0
        self._head_seen = False
        self._complete = False

    # --- the request ---------------------------------------------------------------------

    def begin(self, parts: list[bytes], head_only: bool, body_sent: bool) -> None:
        """Send a request head and the first piece of its body (``parts``) in one write."""
        assert self._transport is not None
        self._enter(EXCHANGE)
        self._head_only = head_only
        self._got_bytes = False
        self._head_waiter = None
        self._on_done = None
        self._failure = None
        self._reset_answer()
        self._transport.writelines(parts)
        # while relay itself waits for the client's body, upstream silence is not the
        # upstream's fault: the clock starts once the body is sent
        self.deadline = self._loop.time() + self._timeout if body_sent else 0.0

    def send(self, data: bytes, chunked: bool) -> None:
        """Send a (non-empty) piece of the body, framed as a chunk when ``chunked``."""
        assert self._transport is not None
        if self._transport.is_closing():
            return  # the connection failed: drain() and the claim's callback say why
        if chunked:
            self._transport.writelines(encode_chunk(data))
        else:
            self._transport.write(data)

    def finish_body(self, chunked: bool) -> None:
        assert self._transport is not None
        if chunked and not self._transport.is_closing():
            self._transport.write(LAST_CHUNK)
        if self.state == EXCHANGE and not self._reading_paused:
            self.deadline = self._loop.time() + self._timeout

    async def drain(self) -> None:
        """Wait while the upstream reads slower than relay writes; raise if it failed."""
        if self._write_paused:
            self.deadline = self._loop.time() + self._timeout
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self.state == CLOSED and self._failure is not None:
            raise self._failure

    @property
    def answer_head(self) -> asyncio.Future[int]:
        """Resolves to the status of the upstream's (final) answer once its head arrived."""
        waiter = self._head_waiter
        if waiter is None:
            waiter = self._head_waiter = self._loop.create_future()
            if self._failure is not None:
                waiter.set_exception(self._failure)
            elif self._head_seen:
                waiter.set_result(self._status)
        return waiter

    @property
    def answered(self) -> bool:
        """The whole answer arrived: the upstream wants no more of the body."""
        return self._complete

    # --- claiming the answer ------------------------------------------------------------

    def attach(self, reply: Reply) -> asyncio.Future[None]:
        """Pass the answer to ``reply``; the future resolves when all of it is passed on."""
        done = self._loop.create_future()
        self.pass_on(reply, lambda failure: _settle(done, failure))
        return done

    def pass_on(self, reply: Reply, on_done: Callable[[BaseException | None], None]) -> None:
        """Pass the answer to ``reply``; ``on_done(None)`` once all of it is passed on, or
        ``on_done(failure)``. The callback runs from this connection's own callbacks (no
        future, no extra turn of the loop) and must be its last word on the exchange."""
        self._reply = reply
        self._claimed(ATTACHED, on_done)

    def discard(self) -> asyncio.Future[None]:
        """Read the answer to its end and drop it."""
        done = self._loop.create_future()
        self._pieces = []
        self._claimed(DISCARDED, lambda failure: _settle(done, failure))
        return done

    def _claimed(self, claim: Claim, on_done: Callable[[BaseException | None], None]) -> None:
        """The one place an answer is claimed (each new answer starts HELD), once."""
        assert self._claim == HELD, f"upstream {self._pool.name}: answer claimed twice"
        self._claim = claim
        if self._failure is not None:
            self._loop.call_soon(on_done, self._failure)  # it failed before anyone claimed it
            return
        self._on_done = on_done
        if self._reading_paused:
            self._resume_held()
        if self._head_seen:
            self._flush()

    def _resume_held(self) -> None:
        if self._reading_paused and (self._reply is None or not self._reply.client_is_paused):
            self.resume_reading()

    def release(self, body_sent: bool = True) -> None:
        """After the exchange: back to the pool when clean, else closed."""
        if self._reusable and body_sent and self.state == IDLE:
            self._pool.put_back(self)
        else:
            self.close()

    # as the QuickDelivery of a bodiless request (see HttpSink.relay_now)

    @property
    def retriable(self) -> bool:
        """A pooled connection the upstream may have closed meanwhile: worth one fresh try."""
        return self.reused

    def abort(self) -> None:
        self.close()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self._enter(CLOSED)
        self._pool.forget(self)
        if previous == EXCHANGE:
            if self._until_close and self._head_seen:
                self._complete = True
                self._flush()
            elif not self._got_bytes:
                self._fail(Stale())
            else:
                self._fail(BadGateway("upstream closed the connection mid-answer", self._pool.name))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.state != EXCHANGE:
            # bytes nobody asked for: this connection cannot be trusted any more
            self.close()
            return
        # an answer that came whole in the first read: taken apart in one call, else by httptools
        whole = whole_answer(data) if WHOLE_HEADS and not self._got_bytes and not self._head_only else None
        self._got_bytes = True
        if whole is None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                self._fail(cause if isinstance(cause, RelayError) else BadGateway(str(exc), self._pool.name))
                return
            except httptools.HttpParserError as exc:
                self._fail(BadGateway(f"upstream answered garbage: {exc}", self._pool.name))
                return
        elif not self._took_whole(*whole):
            return
        self._flush()
        if self.state == EXCHANGE and not self._reading_paused:
            # more of the answer is due: the upstream's clock restarts (an answer that
            # came whole has already stopped it)
            self.deadline = self._loop.time() + self._timeout

    # the client reply (or a full hold buffer) pauses us when the answer can't move on

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self.deadline = 0.0
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and self.state != CLOSED:
            self._reading_paused = False
            self.deadline = self._loop.time() + self._timeout
            self._transport.resume_reading()

    def on_deadline(self) -> None:
        if self.state == EXCHANGE:
            self._fail(GatewayTimeout("upstream did not answer in time", self._pool.name))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_seen:
            self._headers.append((name, value))

    def _took_whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """What httptools' callbacks would have done with a whole answer (see
        relay.fastpath.whole_answer); False when its headers failed the exchange."""
        try:
            self._answer_head(status, headers, keep_alive=True)  # HTTP/1.1: a Connection: close is in the scan
        except RelayError as exc:
            self._fail(exc.with_traceback(None))
            return False
        if body:
            self.on_body(body)
        self._complete = True
        return True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx interim answers are relay's business with the upstream, not the client's
            self._informational = True
            self._headers = []
            return
        self._answer_head(status, self._headers, keep_alive=self._parser.should_keep_alive())

    def _answer_head(self, status: int, headers: list[tuple[bytes, bytes]], *, keep_alive: bool) -> None:
        """The final answer's head is in."""
        try:
            scan = scan_headers(headers, _RESPONSE_DROP)
        except BadRequest as exc:
            raise BadGateway(f"upstream answered bad headers: {exc.detail}", self._pool.name) from exc
        self._status = status
        self._response_headers = scan.forward
        self._content_length = scan.content_length
        # neither length nor chunked: the body ends when the upstream closes
        self._until_close = scan.content_length < 0 and not scan.chunked
        self._head_seen = True
        if scan.close or self._until_close or not keep_alive:
            self._reusable = False
        if self._head_only or status in (204, 304):
            # no body follows; httptools cannot be told so, so this connection is not reused
            if self._head_only:
                self._reusable = False
            self._complete = True
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def on_body(self, body: bytes) -> None:
        if self._claim == ATTACHED:
            reply = self._reply
            if reply is not None and reply.started:
                reply.write(body)
                return
        elif self._claim == DISCARDED:
            return
        self._pieces.append(body)
        self._held += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True

    # --- passing the answer on ---------------------------------------------------------------

    def _flush(self) -> None:
        if not self._head_seen:
            return
        if self._claim == HELD:
            if self._held > HOLD_BYTES:
                self.pause_reading()
            return
        reply = self._reply
        if reply is not None and not reply.started:
            if self._complete:
                # all of it is in hand: it goes whole, keeping its length
                length = self._content_length if self._head_only else self._held
                reply.send_whole(self._status, self._response_headers, self._pieces, length if length > 0 else 0)
                self._pieces = []
                self._finish()
                return
            reply.set_producer(self)
            reply.begin(self._status, self._response_headers)
            for piece in self._pieces:
                reply.write(piece)
            self._pieces = []
        if self._complete:
            if reply is not None:
                reply.end()
            self._finish()

    def _finish(self) -> None:
        self.deadline = 0.0
        reply, self._reply = self._reply, None
        if reply is not None and reply.producer is not None:
            reply.set_producer(None)
        if self._reading_paused:
            self.resume_reading()
            self.deadline = 0.0
        if self.state == EXCHANGE:
            self._enter(IDLE)
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(None)  # last: it may hand this connection to the next request

    def _fail(self, exc: BaseException) -> None:
        self.deadline = 0.0
        self._reusable = False
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.set_producer(None)
        self._failure = exc
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            waiter.exception()  # whoever awaits it sees it; nobody may, if the request failed first
        self.close()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(exc)

    def close(self) -> None:
        self._reusable = False
        if self.state != CLOSED:
            self._enter(CLOSED)
            self._pool.forget(self)
        if self._transport is not None:
            self._transport.abort()


def _settle(done: asyncio.Future[None], failure: BaseException | None) -> None:
    """Resolve a claim's future (the general path awaits one)."""
    if done.done():
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)
        done.exception()  # whoever awaits it sees it; nobody may, if the request failed first


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, config: HttpSinkConfig, deadlines: Deadlines) -> None:
        self.config = config
        self.name = config.name
        self.loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled keep-alive connection (the most recently used), or None."""
        while self._idle:
            conn = self._idle.pop()
            if conn.state == IDLE:
                conn.reused = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        config = self.config
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), config.host, config.port),
                config.connect_timeout,
            )
        except TimeoutError:
            raise GatewayTimeout("connecting to the upstream timed out", self.name) from None
        except OSError as exc:
            raise BadGateway(f"cannot connect to the upstream: {exc.strerror or exc}", self.name) from None
        self._all.add(conn)
        self._deadlines.watch(conn)
        return conn

    def put_back(self, conn: UpstreamConnection) -> None:
        if len(self._idle) < self.config.pool_size:
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._deadlines.unwatch(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
