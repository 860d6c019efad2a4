"""The ``http`` sink: relays requests to an upstream HTTP server.

Each request becomes an ``HttpDelivery`` over a pooled keep-alive connection (a bodiless
one, when a pooled connection is idle, goes straight onto it: ``relay_now``). No upstream
is involved until the first piece of the body is in hand (or the body is known empty):
a body refused at once (bad chunk framing, over the limit) reaches no upstream, and the
head and that piece leave in one write. As the flow's answering sink with no tees, the
upstream's answer streams to the client as it comes (full duplex); otherwise it is held
until every sink has accepted the request. As a tee, a 2xx answer is its acceptance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from relay.config import HttpSinkConfig
from relay.errors import BadGateway
from relay.fastpath import LAST_CHUNK, encode_chunk
from relay.flowcontrol import NO_BODY
from relay.identity import identity_headers
from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Receipt, SinkSlots
from relay.sinks.upstream import Stale, UpstreamConnection, UpstreamPool
from relay.timers import Deadlines

_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


class HttpSink:
    remembers_keys = False  # the upstream gets the Idempotency-Key

    def __init__(self, config: HttpSinkConfig, deadlines: Deadlines) -> None:
        self.name = config.name
        self.config = config
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.pool = UpstreamPool(config, deadlines)
        self._host = f"{config.host}:{config.port}".encode("ascii")
        self._base = config.base_path.encode("ascii")

    def open(self, request: Request, answers: bool, reply: Reply | None) -> HttpDelivery:
        return HttpDelivery(self, request, answers, reply)

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> UpstreamConnection | None:
        """Send a request whose body is complete (none, or a small one read whole) on an
        idle pooled connection at once, in one write, its answer going straight to
        ``reply``, then ``on_done(failure or None)``; None when no connection is idle (then
        the general path). The body stays unread until the exchange ends, so that a stale
        connection's retry the general way sends it again. The connection itself is the
        quick delivery."""
        body = request.body
        if request.headers.chunked:
            return None  # re-framed as it streams, the general way
        conn = self.pool.take_idle()
        if conn is None:
            return None
        head = self.request_head(request)
        conn.begin([head] if body is NO_BODY else [head, body.peek_whole()], request.head_only, True)
        conn.pass_on(reply, on_done)
        return conn

    def request_head(self, request: Request) -> bytes:
        scan = request.headers
        flow = request.flow
        if scan.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif scan.content_length >= 0 or request.method in _BODY_METHODS:
            framing = b"Content-Length: %d\r\n" % max(scan.content_length, 0)
        else:
            framing = b""
        client = request.client
        return b"".join((
            request.method.encode("ascii"), b" ", self._base, request.forward_target, b" HTTP/1.1\r\n",
            b"Host: ", request.host or self._host, b"\r\n",
            request.forward_headers,
            b"X-Forwarded-For: " + client.encode("latin-1") + b"\r\n" if client else b"",
            b"X-Relay-Request-Id: ", request.request_id.encode("ascii"), b"\r\n",
            flow.extra_headers,
            identity_headers(request.identity, flow.name, flow.signer)
            if flow.sends_identity and request.identity is not None else b"",
            framing,
            b"\r\n",
        ))

    async def close(self) -> None:
        await self.pool.close()


class HttpDelivery:
    """One request on its way to the upstream (see the module docstring)."""

    __slots__ = ("_sink", "_request", "_answers", "_reply", "_chunked", "_conn", "_first",
                 "_writes", "_body_sent", "_passed_on")

    def __init__(self, sink: HttpSink, request: Request, answers: bool, reply: Reply | None) -> None:
        self._sink = sink
        self._request = request
        self._answers = answers
        #: the client's reply, when the answer may stream to it from the start
        self._reply = reply
        #: resolves once the whole answer has been passed to the client
        self._passed_on: asyncio.Future[None] | None = None
        self._chunked = request.headers.chunked
        self._conn: UpstreamConnection | None = None
        self._first = b""
        self._writes = 0
        self._body_sent = False

    @property
    def stopped(self) -> bool:
        return self._conn is not None and self._conn.answered

    async def write(self, data: bytes) -> None:
        self._writes += 1
        if self._conn is None:
            self._first = data
            self._begin(self._sink.pool.take_idle() or await self._sink.pool.connect(), last=False)
        else:
            self._conn.send(data, self._chunked)
        try:
            await self._conn_or_fail().drain()
        except Stale:
            raise BadGateway("upstream closed the connection without answering", self._sink.name) from None

    async def finish(self) -> Receipt:
        if self._conn is None:
            self._begin(self._sink.pool.take_idle() or await self._sink.pool.connect(), last=True)
        elif not self._body_sent:
            self._conn.finish_body(self._chunked)
            self._body_sent = True
        try:
            status = await self._conn_or_fail().answer_head
        except Stale:
            # a pooled connection the upstream had meanwhile closed: one fresh try, as long
            # as relay still holds everything it sent
            if not (self._conn_or_fail().reused and self._writes <= 1):
                raise BadGateway("upstream closed the connection without answering", self._sink.name) from None
            self._conn_or_fail().close()
            self._begin(await self._sink.pool.connect(), last=True)
            try:
                status = await self._conn_or_fail().answer_head
            except Stale:
                raise BadGateway("upstream closed the connection without answering", self._sink.name) from None
        if not self._answers:
            await self._conn_or_fail().discard()
            self._release()
            if not 200 <= status < 300:
                raise BadGateway(f"upstream answered {status}", self._sink.name)
        return {"status": status}

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        try:
            await (self._passed_on or self._conn_or_fail().attach(reply))
        finally:
            self._release()

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _begin(self, conn: UpstreamConnection, last: bool) -> None:
        """Send the request head (and the first piece of the body) on ``conn``."""
        self._conn = conn
        sink = self._sink
        request = self._request
        first = self._first
        self._body_sent = last or not request.has_body
        parts = [sink.request_head(request)]
        if self._chunked:
            if first:
                parts += encode_chunk(first)
            if self._body_sent:
                parts.append(LAST_CHUNK)
        elif first:
            parts.append(first)
        conn.begin(parts, request.head_only, self._body_sent)
        if self._reply is not None:
            self._passed_on = conn.attach(self._reply)

    def _conn_or_fail(self) -> UpstreamConnection:
        if self._conn is None:
            raise BadGateway("upstream connection aborted", self._sink.name)
        return self._conn

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self._body_sent)
