"""The ``http`` sink: a pooled keep-alive HTTP/1.1 client to one upstream.

The request body is pumped from the client into the upstream connection with
back-pressure both ways; the upstream's answer is passed to the ``Reply`` from the
parser callbacks, whole when it arrived in one read (so it can keep its Content-Length)
and streamed otherwise. Timeouts use the shared deadline sweep, not per-request timers.
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum

import httptools

from relay.config import HttpSinkConfig
from relay.errors import BadGateway, BadRequest, GatewayTimeout, RelayError
from relay.fastpath import scan_headers
from relay.reply import Reply
from relay.request import Request
from relay.timers import Deadlines

log = logging.getLogger("relay.sinks.http")

#: response headers relay does not pass on (beyond the hop-by-hop set scan_headers drops)
_RESPONSE_DROP: frozenset[bytes] = frozenset()
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


class _Stale(Exception):
    """A reused connection died before answering: safe to retry on a fresh one."""


class ConnState(IntEnum):
    IDLE = 0        # in the pool, or just connected
    EXCHANGE = 1    # a request is in flight
    CLOSED = 2


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream; carries one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._timeout = pool.config.timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.state = ConnState.IDLE
        self.deadline = 0.0
        self._reply: Reply | None = None
        self._done: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._head_only = False
        self._got_bytes = False
        self._reusable = True
        self._reset_response()

    def _reset_response(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._informational = False
        self._response_headers = b""
        self._content_length = -1
        self._until_close = False
        self._pieces: list[bytes] = []
        self._body_len = 0
        self._head_seen = False
        self._complete = False

    # --- used by the sink ----------------------------------------------------------------

    def begin(
        self, reply: Reply, head: bytes, first: bytes, chunked: bool, head_only: bool, body_sent: bool
    ) -> asyncio.Future[None]:
        """Send a request head with the first piece of its body, in one write.

        The returned future resolves when the upstream's answer is complete.
        """
        assert self._transport is not None and self.state == ConnState.IDLE
        self.state = ConnState.EXCHANGE
        self._reply = reply
        self._head_only = head_only
        self._got_bytes = False
        self._done = self._loop.create_future()
        self._reset_response()
        if chunked:
            parts = [head, b"%x\r\n" % len(first), first, b"\r\n"] if first else [head]
            if body_sent:
                parts.append(b"0\r\n\r\n")
            self._transport.writelines(parts)
        else:
            self._transport.writelines((head, first))
        # while relay itself waits for the client's body, upstream silence is not the
        # upstream's fault: the clock starts once the body is sent
        self.deadline = self._loop.time() + self._timeout if body_sent else 0.0
        return self._done

    def send(self, data: bytes, chunked: bool) -> None:
        assert self._transport is not None
        if chunked:
            self._transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._transport.write(data)

    def finish_body(self, chunked: bool) -> None:
        assert self._transport is not None
        if chunked:
            self._transport.write(b"0\r\n\r\n")
        if self.state == ConnState.EXCHANGE and not self._reading_paused:
            self.deadline = self._loop.time() + self._timeout

    @property
    def answered(self) -> bool:
        """The upstream already sent its whole answer (it may not want the rest of the body)."""
        return self._complete

    async def drain(self) -> None:
        if self._write_paused:
            self.deadline = self._loop.time() + self._timeout
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = ConnState.CLOSED
        self._pool.forget(self)
        if previous == ConnState.EXCHANGE:
            if self._until_close and self._head_seen:
                self._complete = True
                self._flush()
            elif not self._got_bytes:
                self._fail(_Stale())
            else:
                self._fail(BadGateway("upstream closed the connection mid-answer", self._pool.name))
        self._wake_drain(ConnectionResetError("upstream closed"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    def _wake_drain(self, exc: BaseException | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        if self.state != ConnState.EXCHANGE:
            # bytes nobody asked for: this connection cannot be trusted any more
            self.close()
            return
        self._got_bytes = True
        if not self._reading_paused:
            self.deadline = self._loop.time() + self._timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, RelayError) else BadGateway(str(exc), self._pool.name))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadGateway(f"upstream answered garbage: {exc}", self._pool.name))
            return
        self._flush()

    # the Reply pauses us when the client reads slower than the upstream writes

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self.deadline = 0.0
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self.deadline = self._loop.time() + self._timeout
            self._transport.resume_reading()

    def on_deadline(self) -> None:
        if self.state == ConnState.EXCHANGE:
            self._fail(GatewayTimeout("upstream did not answer in time", self._pool.name))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_seen:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx interim answers are relay's business with the upstream, not the client's
            self._informational = True
            self._headers = []
            return
        try:
            scan = scan_headers(self._headers, _RESPONSE_DROP)
        except BadRequest as exc:
            raise BadGateway(f"upstream answered bad headers: {exc.detail}", self._pool.name) from exc
        self._status = status
        self._response_headers = scan.forward
        self._content_length = scan.content_length
        # neither length nor chunked: the body ends when the upstream closes
        self._until_close = scan.content_length < 0 and not scan.chunked
        self._head_seen = True
        if scan.close or self._until_close or not self._parser.should_keep_alive():
            self._reusable = False
        if self._head_only or status in (204, 304):
            # no body follows; httptools cannot be told so, so this connection is not reused
            if self._head_only:
                self._reusable = False
            self._complete = True

    def on_body(self, body: bytes) -> None:
        reply = self._reply
        if reply is not None and reply.started:
            reply.write(body)
        else:
            self._pieces.append(body)
            self._body_len += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True

    # --- handing the answer to the client ---------------------------------------------------

    def _flush(self) -> None:
        reply = self._reply
        if reply is None or not self._head_seen:
            return
        if not reply.started:
            if self._complete:
                length = self._content_length if self._head_only else self._body_len
                reply.send_whole(self._status, self._response_headers, self._pieces, max(length, 0))
            else:
                reply.set_producer(self)
                reply.begin(self._status, self._response_headers)
                for piece in self._pieces:
                    reply.write(piece)
            self._pieces = []
        if self._complete:
            if reply.started:
                reply.end()
            self._finish()

    def _finish(self) -> None:
        self.deadline = 0.0
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.set_producer(None)
        if self._reading_paused:
            self.resume_reading()
            self.deadline = 0.0
        done, self._done = self._done, None
        if self.state == ConnState.EXCHANGE:
            self.state = ConnState.IDLE
        if done is not None and not done.done():
            done.set_result(None)

    def release(self, body_sent: bool) -> None:
        """Called by the sink after the exchange: back to the pool, or closed."""
        if self._reusable and body_sent and self.state == ConnState.IDLE:
            self._pool.put_back(self)
        else:
            self.close()

    def _fail(self, exc: BaseException) -> None:
        self.deadline = 0.0
        self._reusable = False
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.set_producer(None)
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.set_exception(exc)
        self.close()

    def close(self) -> None:
        self._reusable = False
        if self.state != ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._pool.forget(self)
        if self._transport is not None:
            self._transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, config: HttpSinkConfig, deadlines: Deadlines) -> None:
        self.config = config
        self.name = config.name
        self.loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused from the pool."""
        while self._idle:
            conn = self._idle.pop()
            if conn.state == ConnState.IDLE:
                return conn, True
        return await self.connect(), False

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


class HttpSink:
    """Relays each request to ``url`` and the upstream's answer back to the client."""

    def __init__(self, config: HttpSinkConfig, deadlines: Deadlines) -> None:
        self.name = config.name
        self.config = config
        self._pool = UpstreamPool(config, deadlines)
        self._host = f"{config.host}:{config.port}".encode("ascii")
        self._base = config.base_path.encode("ascii")

    def _head(self, request: Request) -> bytes:
        scan = request.headers
        if scan.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif scan.content_length >= 0 or request.method in _BODY_METHODS:
            framing = b"Content-Length: %d\r\n" % max(scan.content_length, 0)
        else:
            framing = b""
        return b"".join((
            request.method.encode("ascii"), b" ", self._base, request.forward_target, b" HTTP/1.1\r\n",
            b"Host: ", scan.host or self._host, b"\r\n",
            scan.forward,
            self._forwarded_for(request.client),
            b"X-Relay-Request-Id: ", request.request_id.encode("ascii"), b"\r\n",
            request.flow.extra_headers,
            framing,
            b"\r\n",
        ))

    @staticmethod
    def _forwarded_for(client: str | None) -> bytes:
        return b"X-Forwarded-For: " + client.encode("latin-1") + b"\r\n" if client else b""

    async def relay(self, request: Request, reply: Reply) -> None:
        # The first piece of the body is awaited before an upstream is involved: a body
        # refused at once (bad chunk framing, over the limit) reaches no upstream, and the
        # head and that piece leave in one write.
        first = await request.body.read() if request.has_body else b""
        head = self._head(request)
        conn, reused = await self._pool.acquire()
        try:
            await self._exchange(conn, head, first, request, reply)
        except _Stale:
            # a pooled connection the upstream had meanwhile closed: one fresh try, as long
            # as relay still holds everything it has read of the body
            if not (reused and request.body.consumed == len(first) and not reply.started):
                raise BadGateway("upstream closed the connection without answering", self.name) from None
            conn = await self._pool.connect()
            try:
                await self._exchange(conn, head, first, request, reply)
            except _Stale:
                raise BadGateway("upstream closed the connection without answering", self.name) from None

    async def _exchange(
        self, conn: UpstreamConnection, head: bytes, first: bytes, request: Request, reply: Reply
    ) -> None:
        body = request.body
        chunked = request.headers.chunked
        body_sent = body.drained
        done = conn.begin(reply, head, first, chunked, request.head_only, body_sent)
        try:
            while not body_sent and not conn.answered:
                await conn.drain()
                data = await body.read()
                if not data:
                    conn.finish_body(chunked)
                    body_sent = True
                else:
                    conn.send(data, chunked)
            await done
        except ConnectionResetError:
            await done  # the connection's own failure says why
        finally:
            if not done.done():
                done.cancel()
            conn.release(body_sent)

    async def close(self) -> None:
        await self._pool.close()
