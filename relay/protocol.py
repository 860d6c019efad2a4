"""The client side of HTTP/1.1: one ``ClientConnection`` per accepted connection.

The protocol object only moves bytes: it feeds httptools, applies relay's own strictness
(head size, Host rules, framing, path normalization, routing) when a head completes, and
hands each request to an ``Exchange`` that talks to the sinks. Exchanges on one connection
run one at a time, in order; pipelined requests wait in a queue while reading is paused.

Parsing state lives in one place (``_state``, changed only by ``_enter``, along the
transitions ``_NEXT`` lists); everything the parser reports after a head has completed
belongs to that request's body, so chunked trailers (which httptools reports through
``on_header``) can never become headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING

import httptools

from relay.errors import (
    BadRequest,
    BodyTimeout,
    HeadersTooLarge,
    NotImplementedMethod,
    Overloaded,
    RelayError,
    RequestTimeout,
)
from relay.cached_answers import RecordingReply
from relay.exchange import Answer, Exchange, Refusal
from relay.fastpath import WHOLE_HEADS, admit_head, whole_request
from relay.flowcontrol import NO_BODY, ClientGone, ReadGate, RequestBody
from relay.pacing import BodyPace, SendWatch
from relay.reply import Reply
from relay.request import Request
from relay.responses import error_response

if TYPE_CHECKING:
    from relay.context import ServerContext

log = logging.getLogger("relay.protocol")

#: one read's worth of slack before the coarse head-size guard fires; the exact check
#: runs when the head completes
_READ_SLACK = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: how long relay keeps draining a half-closed connection (see _close_lingering)
_LINGER = 2.0
#: a body up to this size that arrives in the read that completed its head is read whole
#: before its exchange starts, so that a sink may take it at once (``Sink.relay_now``)
_WHOLE_BODY_BYTES = 64 * 1024


class ParseState(IntEnum):
    IDLE = 0   # between requests
    HEAD = 1   # inside a request head
    BODY = 2   # head done; everything until message end is body (trailers included)
    DEAD = 3   # a framing error: nothing more is parsed on this connection
    LINGER = 4  # answered and half-closed: what still arrives is read and dropped until close


# The members as module globals: an attribute lookup on an Enum class costs ≈ 0.1 µs in
# CPython 3.11, and the request path makes dozens of them.
IDLE, HEAD, BODY, DEAD, LINGER = ParseState

#: the states a connection may move to from each (by index), as ``_enter`` holds it to:
#: a head, then its body, then the next; and once dead or lingering, nothing is parsed again
#: (an exchange never ends inside a parser callback: sinks answer from later callbacks)
_NEXT = (
    frozenset((HEAD, BODY, DEAD, LINGER)),  # IDLE (to BODY: a head taken whole)
    frozenset((BODY, DEAD, LINGER)),        # HEAD
    frozenset((IDLE, DEAD, LINGER)),        # BODY
    frozenset((DEAD, LINGER)),              # DEAD
    frozenset((DEAD, LINGER)),              # LINGER
)


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_ctx", "_unix", "_trusted_peer", "_peer", "_transport", "_parser", "_gate", "_state",
        "_url", "_headers", "_head_size", "_head_bytes", "_parsing", "_active", "_queue", "_closed",
        "_write_paused", "deadline", "_begun", "_body_pace", "_send_watch", "_gone_as",
        "_read", "_read_fresh", "_line", "_line_at_start", "_line_open", "_waiting",
    )

    def __init__(self, ctx: ServerContext, unix: bool) -> None:
        self._ctx = ctx
        #: accepted on a Unix socket: the peer has no address (and asking uvloop for one
        #: costs a Python socket object per connection)
        self._unix = unix
        self._trusted_peer = unix and ctx.trust_unix_peers  # a TCP peer by its address, once known
        self._peer: str | None = None
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        #: made for the first head httptools must read: one taken whole needs none, and
        #: behind mod_proxy most connections carry just one such head
        self._parser: httptools.HttpRequestParser | None = None
        self._gate: ReadGate = None  # type: ignore[assignment]
        self._state = IDLE
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0   # the head as relay counts it: target, names and values, 4 more a header
        self._head_bytes = 0  # raw bytes read while a head was due (the coarse guard)
        self._parsing: Request | None = None      # the request whose body is arriving
        self._active: Answer | None = None        # the exchange writing its response
        self._queue: deque[Answer] = deque()      # pipelined exchanges waiting their turn
        self._closed = False
        self._write_paused = False
        self.deadline = 0.0
        self._begun = 0.0  # the current request's first byte, on the client's clock (see ReadGate)
        self._body_pace: BodyPace | None = None    # made for the first body that takes more than one read
        self._send_watch: SendWatch | None = None  # made when output first backs up
        #: the audit reason for exchanges cut short when the connection goes
        self._gone_as = "client_gone"
        # The request line as sent, for the checks httptools leaves out (see check_request_line):
        self._read = b""           # the bytes being parsed now
        self._read_fresh = False   # and no request began in them yet, though one may begin at their start
        self._line = b""           # the bytes the current request began in, from its start when known
        self._line_at_start = False
        self._line_open = False    # the request line may not be complete in _line yet
        #: the exchange of a small body still arriving in this read (see _WHOLE_BODY_BYTES)
        self._waiting: Exchange | None = None

    def _enter(self, state: ParseState) -> None:
        """The one place the connection's state changes, along ``_NEXT`` only."""
        assert state in _NEXT[self._state], f"client connection: {self._state.name} -> {state.name}"
        self._state = state

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._gate = ReadGate(transport, self._ctx.loop.time)
        ctx = self._ctx
        if not ctx.admit(self):
            transport.write(error_response(Overloaded("too many connections"), "-", False))  # type: ignore[attr-defined]
            ctx.deadlines.watch(self)  # for the lingering close only; not an admitted connection
            self._close_lingering()
            return
        if not self._unix:
            peername = transport.get_extra_info("peername")
            if isinstance(peername, tuple):
                self._peer = peername[0]
                self._trusted_peer = self._peer in ctx.trusted_proxies
        self.deadline = ctx.loop.time() + ctx.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        # the parser calls back into this object: let go of it, so that the connection's
        # objects are freed as it ends rather than left for the garbage collector to find
        self._parser = None
        self._ctx.release(self)
        if self._send_watch is not None:
            self._ctx.deadlines.unwatch(self._send_watch)
        request = self._parsing
        if request is not None:
            request.body.fail(ClientGone())
        for exchange in (self._active, *self._queue):
            if exchange is not None:
                exchange.client_gone(self._gone_as)
        self._queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._watch_sending()
        if self._active is not None:
            self._active.reply.client_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._active is not None:
            self._active.reply.client_resumed()

    def on_deadline(self) -> None:
        """The sweep found this connection past its deadline."""
        if self._closed:
            return
        if self._state == LINGER:
            self._close()
        elif self._state == HEAD:
            if self._gate.paused:
                # a pipelined head waits while relay is not reading: not the client's fault
                self.deadline = self._ctx.loop.time() + self._ctx.header_timeout
            else:
                self._fail(RequestTimeout("request head not received in time"))
        elif self._state == BODY:
            self._pace_body(False)
        elif self._active is None:
            self._close()  # an idle keep-alive connection: close quietly

    def _pace_body(self, starting: bool) -> None:
        """Judge how the body is coming (see BodyPace); set the deadline of the next look."""
        ctx = self._ctx
        now = ctx.loop.time()
        clock = self._gate.client_clock(now)
        request = self._parsing
        received = request.body.received if request is not None else 0
        pace = self._body_pace
        if pace is None:
            pace = self._body_pace = BodyPace()
        try:
            if starting:
                wait = pace.start(ctx.min_body_rate, ctx.body_rate_window, ctx.request_timeout,
                                  self._begun, clock, received)
            else:
                wait = pace.check(clock, received)
        except BodyTimeout as err:
            self._fail(err)
            return
        self.deadline = now + wait

    def _watch_sending(self) -> None:
        """Output is backing up: from now on the client must take some of it every send_timeout."""
        watch = self._send_watch
        if watch is None:
            if self._closed:
                return
            watch = self._send_watch = SendWatch(self._transport, self._ctx.loop.time, self._send_timed_out)
            self._ctx.deadlines.watch(watch)
        watch.arm(self._ctx.send_timeout)

    def _send_timed_out(self) -> None:
        if not self._closed:
            log.debug("client took nothing for %gs: connection dropped", self._ctx.send_timeout)
            self._gone_as = "send_timeout"
            self._transport.abort()  # close() would wait for the bytes the client does not take

    def _close(self) -> None:
        """Close once what was written has gone out; a client that does not take it is cut
        off after send_timeout."""
        transport = self._transport
        transport.close()
        if transport.get_write_buffer_size():
            self._watch_sending()

    def close_if_idle(self) -> None:
        """Close the connection if no request is in progress (used when draining)."""
        if self._active is None and self._state == IDLE and not self._closed:
            self._close()

    @property
    def busy(self) -> bool:
        return self._active is not None

    # --- bytes in ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state >= DEAD:
            return
        if state == IDLE and WHOLE_HEADS:  # a bodiless head alone in its read: one call
            head = whole_request(data)
            if head is not None:
                self._took_whole(data, *head)
                return
        if state != BODY:
            self._head_bytes += len(data)
            if state == HEAD and self._line_open:  # a head arriving in pieces: rare
                self._line += data
                self._line_open = b"\n" not in data
        self._read = data
        self._read_fresh = state == IDLE
        parser = self._parser
        if parser is None:  # at a message boundary: whole heads leave the connection in step
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, RelayError) else BadRequest(str(exc)))
            return
        except httptools.HttpParserInvalidMethodError:
            self._fail(NotImplementedMethod("unknown method"))
            return
        except httptools.HttpParserUpgrade:
            self._fail(BadRequest("protocol upgrade is not allowed"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadRequest(str(exc)))
            return
        finally:
            if self._waiting is not None:  # its body goes on in later reads (or failed)
                self._start_waiting()
        if self._state == HEAD:
            if self._head_bytes > self._ctx.max_header_bytes + _READ_SLACK:
                self._fail(HeadersTooLarge("request head too large"))
        elif self._state == BODY and not self.deadline:
            self._pace_body(True)  # the body takes more than this read: from now on it is paced

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._enter(HEAD)
        self._line = self._read
        self._line_at_start = self._read_fresh
        self._read_fresh = False
        self._line_open = True
        self._url = b""
        self._headers = []
        self._head_size = 0
        now = self._ctx.loop.time()
        # the client's clock (ReadGate.client_clock) in short: reading cannot have been
        # paused long before this, as no byte is read while it is
        self._begun = now - self._gate.paused_for
        self.deadline = now + self._ctx.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state == HEAD:
            self._headers.append((name, value))
            self._head_size += len(name) + len(value) + 4
        # a trailer after a chunked body: counted against the head limit, never used
        elif self._head_bytes + len(name) + len(value) > self._ctx.max_header_bytes:
            raise HeadersTooLarge("trailers too large")
        else:
            self._head_bytes += len(name) + len(value)

    def on_headers_complete(self) -> None:
        self._enter(BODY)
        self._head_bytes = 0
        self.deadline = 0.0
        parser = self._parser
        assert parser is not None  # it is calling back
        self._admit(parser.get_method(), parser.get_http_version(), parser.should_keep_alive(),
                    self._line, self._line_at_start)

    def _took_whole(self, data: bytes, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                    head_size: int, keep_alive: bool) -> None:
        """What httptools' callbacks do with a bodiless HTTP/1.1 head that came whole and
        alone in one read (see relay.fastpath.whole_request), from on_message_begin to
        on_message_complete. (``_begun`` is left alone: only a body is paced by it.)"""
        self._url = url
        self._headers = headers
        self._head_size = head_size
        self._enter(BODY)
        self._head_bytes = 0
        self.deadline = 0.0
        try:
            self._admit(method, "1.1", keep_alive, data, True)
        except RelayError as exc:
            self._fail(exc)
            return
        self.on_message_complete()

    def _admit(self, method: bytes, version: str, keep_alive: bool, line: bytes, line_at_start: bool) -> None:
        """Start the exchange of the head just parsed: relayed, refused (401/403, ...), or
        answered for matching no flow (see relay.fastpath.admit_head, where the checks live).

        Raises a RelayError for heads that end the connection (malformed, too large, ...).
        """
        outcome = admit_head(
            self._ctx, self._head_size, method, version, self._url, self._headers, keep_alive, line,
            line_at_start, self._peer, self._trusted_peer, self._make_body,
        )
        if isinstance(outcome, tuple):
            request, refusal = outcome
            self._parsing = request
            if refusal is not None:
                self._start(Refusal(self._ctx, self._make_reply(request), refusal, request=request))
                return
            exchange = Exchange(self._ctx, request, self._make_reply(request))
            if 0 < request.headers.content_length <= _WHOLE_BODY_BYTES:
                self._waiting = exchange  # started once its body is complete, or this read ends
            else:
                self._start(exchange)
        else:
            # a well-formed, bodiless request for no flow: answered, and the connection stays usable
            reply = Reply(
                self._transport, self._ctx.next_request_id(), head_only=method == b"HEAD",
                http10=version == "1.0", keep_alive=keep_alive, client_paused=self._write_paused,
            )
            self._start(Refusal(self._ctx, reply, outcome, raw_target=self._url, in_step=True))

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request.body.feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            if request.body is not NO_BODY:  # born complete, and shared
                request.body.feed_eof()
            self._parsing = None
        self._enter(IDLE)
        if self._waiting is not None:
            self._start_waiting()

    def _start_waiting(self) -> None:
        exchange, self._waiting = self._waiting, None
        assert exchange is not None
        self._start(exchange)

    # --- the head: relay's own strictness ------------------------------------------------

    def _make_body(self, max_body: int, expects_continue: bool) -> RequestBody:
        return RequestBody(
            self._gate, max_body, complete=False, on_first_read=self._send_continue if expects_continue else None,
        )

    def _make_reply(self, request: Request) -> Reply:
        cache = request.flow.cache
        if cache is not None:
            return RecordingReply(self._transport, request, cache, http10=request.version == "1.0",
                                  client_paused=self._write_paused)
        return Reply(
            self._transport, request.request_id, head_only=request.head_only, http10=request.version == "1.0",
            keep_alive=request.keep_alive, client_paused=self._write_paused,
        )

    def _send_continue(self) -> None:
        if self._active is not None and not self._active.reply.started and not self._transport.is_closing():
            self._transport.write(_CONTINUE)

    # --- errors detected while parsing ---------------------------------------------------

    def _fail(self, err: RelayError) -> None:
        """The parser side failed: answer ``err`` in turn and close, parsing nothing more."""
        # kept until answered: without its traceback, whose frames would hold this
        # connection in a cycle for the garbage collector
        err = err.with_traceback(None)
        self._enter(DEAD)
        self._gate.pause("dead")
        request = self._parsing
        self._parsing = None
        if request is not None and not request.body.complete:
            # the exchange of this request is reading its body: let it answer
            request.body.fail(err)
            return
        if not self._closed:
            request_id = self._ctx.next_request_id()
            reply = Reply(self._transport, request_id, head_only=False, http10=False, keep_alive=False,
                          client_paused=self._write_paused)
            self._start(Refusal(self._ctx, reply, err, raw_target=self._url))

    # --- running exchanges in order ------------------------------------------------------

    def _start(self, exchange: Answer) -> None:
        if self._active is None:
            self._active = exchange
            exchange.start(self._exchange_done)
        else:
            self._queue.append(exchange)
            self._gate.pause("pipeline")

    def _exchange_done(self, exchange: Answer) -> None:
        self._active = None
        if self._closed:
            return
        if not exchange.request_drained:
            # the connection is out of step with the client (unread body, a refused request)
            self._close_lingering()
            return
        if not exchange.reply.keep_alive:
            self._enter(DEAD)
            self._close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            if not self._queue:
                self._gate.resume("pipeline")
            self._active = nxt
            # the client socket may have paused or resumed while this reply waited its turn
            if self._write_paused:
                nxt.reply.client_paused()
            else:
                nxt.reply.client_resumed()
            nxt.start(self._exchange_done)
        elif self._state == IDLE:
            self.deadline = self._ctx.loop.time() + self._ctx.idle_timeout

    def _close_lingering(self) -> None:
        """Close after the last answer while the client may still be sending.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the answer before the client reads it (a 413 to an upload in progress, say). So:
        half-close, read and drop whatever still arrives for up to ``_LINGER`` seconds,
        then close (earlier, when the client closes first).
        """
        self._enter(LINGER)
        transport = self._transport
        if self._closed or transport.is_closing():
            return
        if not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self._gate.release_all()
        self.deadline = self._ctx.loop.time() + _LINGER

    def abort(self) -> None:
        """Drop the connection at once (the end of a shutdown grace period)."""
        if not self._closed:
            self._transport.abort()
