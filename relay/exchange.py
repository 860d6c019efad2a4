"""One request's journey through its flow: deliver to the sink, answer, audit.

An ``Exchange`` relays an admitted request. It runs as one task per request, except in the
commonest case, which needs none: a request whose body is complete (none, or read whole
with its head) for a flow's only sink is relayed from callbacks when the sink can start at
once (``Sink.relay_now``; the sink calls back once the answer is out). A request refused
before any sink is involved (404, 401, 403, a shed 503, a malformed head) is a
``Refusal``: answered at once, without a task. The sink
streams the body out and the answer back through the ``Reply``; whatever goes wrong is a
``RelayError`` and is answered by ``Reply.fail`` (the one place errors become responses).
Exactly one audit record is written per exchange, whatever its outcome; with
``audit.commit = "before-answer"`` the answer is held until it is (see ``relay.audit``),
and the connection moves on only then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.cached_answers import RecordingReply
from relay.errors import BadGateway, RelayError, SinkError
from relay.flowcontrol import NO_BODY, ClientGone
from relay.idempotency import Claim
from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Delivery, QuickDelivery, Receipt, Sink

if TYPE_CHECKING:
    from relay.context import ServerContext

log = logging.getLogger("relay.exchange")


class Answer:
    """What an ``Exchange`` and a ``Refusal`` share, and all the connection and the audit
    log see of them: one answer, and its one audit record."""

    __slots__ = ("_ctx", "reply", "_on_done", "outcome", "failed_sink", "detail", "_ended")

    #: the admitted request; None for one refused before it had a flow
    request: Request | None
    #: a request refused before it had a flow: its target as it came (for the audit record)
    raw_target: bytes = b""
    #: how long the sink took to accept, when it answered from callbacks
    sink_seconds: float | None = None
    #: a streamed answer's record was noted as its head went
    head_noted: bool = False

    def __init__(self, ctx: ServerContext, reply: Reply, outcome: str) -> None:
        self._ctx = ctx
        self.reply = reply
        self._on_done: Callable[[Answer], None] | None = None
        #: the audit reason: "relayed", or the error code / failure that decided the answer
        self.outcome = outcome
        #: the sink whose failure decided the answer, if one did
        self.failed_sink: str | None = None
        #: why the request was refused, for the audit record, when the error said more than its code
        self.detail: str | None = None
        self._ended = False

    def _refuse(self, err: RelayError) -> None:
        self.outcome = err.reason or err.code
        if err.detail != err.code:
            self.detail = err.detail
        if isinstance(err, SinkError):
            self.failed_sink = err.sink
        self.reply.fail(err)

    def _note_cache(self) -> None:
        # how a caching flow's cache answered, for the audit record (a refusal's own words
        # win; a refusal never asked it)
        reply = self.reply
        if self.detail is None and isinstance(reply, RecordingReply) and reply.result:
            self.detail = "cache " + reply.result

    def _done(self) -> None:
        self._ended = True
        self._note_cache()
        if not self._ctx.exchange_done(self):
            self._answered()

    def _answered(self) -> None:
        if self._on_done is not None:
            self._on_done(self)

    def committed(self) -> None:
        """The audit record the answer waited for is written (or the answer withdrawn)."""
        self.reply.release()
        if self._ended:
            self._answered()

    @property
    def request_drained(self) -> bool:
        """The client's request was read to its end, so the connection is in step."""
        raise NotImplementedError

    def start(self, on_done: Callable[[Answer], None]) -> None:
        """Answer, then call ``on_done`` once the answer is out (and its record written)."""
        raise NotImplementedError

    def client_gone(self, reason: str = "client_gone") -> None:
        """The client's connection is gone; ``reason`` says why, for the audit record."""
        raise NotImplementedError


class Refusal(Answer):
    """A request refused before any sink is involved, answered without a task: on the
    next turn of the loop, not from inside the parser still reading the request, so
    refusing stays the cheapest thing relay does.

    ``request``: the admitted request a 401, 403 or a shed 503 refuses (its flow and
    identity go into the audit record); None for a request that never had one (no flow, a
    malformed head), whose ``raw_target`` is recorded instead. ``in_step``: such a request
    was read whole, so the connection may carry on.
    """

    __slots__ = ("request", "_error", "raw_target", "_in_step")

    def __init__(self, ctx: ServerContext, reply: Reply, error: RelayError, *, request: Request | None = None,
                 raw_target: bytes = b"", in_step: bool = False) -> None:  # fmt: skip
        # the base named, not super(): Python 3.11 builds a super object per call, and one
        # of these is made for every request
        Answer.__init__(self, ctx, reply, error.reason or error.code)
        self.request = request
        self._error = error
        self.raw_target = raw_target
        self._in_step = in_step
        if ctx.audit.holds_answers:
            reply.hold(None)  # an error answer is never streamed

    @property
    def request_drained(self) -> bool:
        """The client's request was read to its end, so the connection is in step."""
        return self.request.body.drained if self.request is not None else self._in_step

    def start(self, on_done: Callable[[Answer], None]) -> None:
        self._on_done = on_done
        self._ctx.exchanges += 1
        self._ctx.loop.call_soon(self._answer)

    def _answer(self) -> None:
        self._refuse(self._error)
        self._done()

    def client_gone(self, reason: str = "client_gone") -> None:
        """Nothing to stop: the answer is already on its way."""


class Exchange(Answer):
    """An admitted request relayed to its flow's sinks."""

    __slots__ = ("request", "_task", "_quick", "sink_seconds", "_gone_as", "head_noted")

    request: Request  # always admitted

    def __init__(self, ctx: ServerContext, request: Request, reply: Reply) -> None:
        Answer.__init__(self, ctx, reply, "relayed")  # (not super(): see Refusal)
        self.request = request
        self._task: asyncio.Task[None] | asyncio.Task[RelayError | None] | None = None
        #: the request relayed from callbacks, without a task, while it is in flight
        self._quick: QuickDelivery | None = None
        #: how long the sink took to accept, when it answered from callbacks (the general
        #: path counts its sinks' latencies itself)
        self.sink_seconds: float | None = None
        #: the audit reason should the client go (or be cut off) before the end
        self._gone_as = "client_gone"
        self.head_noted = False
        if ctx.audit.holds_answers:
            reply.hold(self._stream_begins)

    @property
    def request_drained(self) -> bool:
        """The client's request was read to its end, so the connection is in step."""
        return self.request.body.drained

    def start(self, on_done: Callable[[Answer], None]) -> None:
        self._on_done = on_done
        self._ctx.exchanges += 1
        request = self.request
        limiter = request.flow.limiter
        if limiter is not None and limiter.shared:
            # the limits counted in Redis, asked before any of the body is read
            self._task = self._ctx.loop.create_task(limiter.check_shared(
                self._ctx.shared, request.identity, request.client, request.flow.shared_fail_closed))
            self._task.add_done_callback(self._limits_checked)
            return
        self._relay(request)

    def _relay(self, request: Request) -> None:
        reply = self.reply
        if isinstance(reply, RecordingReply) and reply.answer_from_cache():
            # past the flow's authentication and authorization: only now may the cache answer
            self._ctx.loop.call_soon(self._done)
            return
        if request.body.complete and len(request.flow.sinks) == 1 and self._relay_now(request):
            return
        self._start_task()

    def _limits_checked(self, task: asyncio.Task[RelayError | None]) -> None:
        self._task = None
        if task.cancelled():  # the client left while Redis was asked
            self.outcome = self._gone_as
            self.reply.keep_alive = False
            self._done()
            return
        failure = task.exception()
        if failure is not None:  # not one a client could cause: never leave the exchange hanging
            log.error("request %s: checking its shared rate limits failed", self.reply.request_id, exc_info=failure)
            self.outcome = "internal_error"
            self.reply.fail(RelayError("internal error"))
            self._done()
            return
        refusal = task.result()
        if refusal is not None:
            self._refuse(refusal)
            self._done()
            return
        self._relay(self.request)

    def _start_task(self) -> None:
        self._task = self._ctx.loop.create_task(self._run())
        # a done callback, not a finally: it also runs for a task cancelled before it began
        self._task.add_done_callback(self._finished)

    def client_gone(self, reason: str = "client_gone") -> None:
        self._gone_as = reason
        if self._task is not None and not self._task.done():
            self._task.cancel()
        quick, self._quick = self._quick, None
        if quick is not None:
            quick.abort()
            self._give_back_quick_slot()
            self.outcome = self._gone_as
            self.reply.keep_alive = False
            self._done()

    # --- a request whose body is complete, to a flow's only sink, relayed from callbacks ---

    def _relay_now(self, request: Request) -> bool:
        sink = request.flow.sinks[0]
        if request.body is not NO_BODY and sink.remembers_keys and request.headers.idempotency_key is not None:
            return False  # the key's claim is made and kept the general way (relay.idempotency)
        if not sink.slots.try_take():
            return False  # the general path answers the 503
        quick = sink.relay_now(request, self.reply, self._relayed_now)
        if quick is None:
            sink.slots.give_back()
            return False
        self._quick = quick
        return True

    def _give_back_quick_slot(self) -> Sink:
        """Give back the slot the quick lane took; the sink it belongs to."""
        sink = self.request.flow.sinks[0]
        sink.slots.give_back()
        return sink

    def _relayed_now(self, failure: BaseException | None) -> None:
        quick, self._quick = self._quick, None
        if quick is None:
            return  # the client left first; client_gone finished the exchange
        sink = self._give_back_quick_slot()
        request = self.request
        if failure is None:
            quick.release()
            request.body.take_whole()  # what the sink took (if it left it to the exchange)
            self.sink_seconds = time.monotonic() - request.received_at
            self._done()
            return
        quick.abort()
        if quick.retriable and not self.reply.started:
            # a pooled connection the upstream had meanwhile closed: the general path tries
            # afresh, reading the body (still unread) from the start
            self._start_task()
            return
        request.body.take_whole()
        if not isinstance(failure, RelayError):
            failure = BadGateway("upstream closed the connection without answering", sink.name)
        self._refuse(failure)
        self._done()

    async def _run(self) -> None:
        request = self.request
        try:
            await self._deliver(request)
        except RelayError as err:
            self._refuse(err)
        except (ClientGone, asyncio.CancelledError):
            self.outcome = self._gone_as
            self.reply.keep_alive = False
        except Exception:
            log.exception("request %s failed unexpectedly", self.reply.request_id)
            self.outcome = "internal_error"
            self.reply.fail(RelayError("internal error"))

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.outcome = self._gone_as
            self.reply.keep_alive = False
        self._done()

    def _stream_begins(self) -> None:
        self.head_noted = True
        self._note_cache()
        self._ctx.audit.record_stream(self)

    async def _deliver(self, request: Request) -> None:
        """Read the body once into every sink of the flow; answer once all accepted."""
        flow = request.flow
        taken: list[Sink] = []
        try:
            for sink in flow.sinks:
                sink.slots.take()
                taken.append(sink)
            key = request.headers.idempotency_key
            if key is not None and flow.remembers_keys:
                request.claim = Claim(request, key)
            await self._pump(request, flow.sinks)
        finally:
            for sink in taken:
                sink.slots.give_back()

    async def _pump(self, request: Request, sinks: tuple[Sink, ...]) -> None:
        reply = self.reply
        sole = len(sinks) == 1
        answering = sinks[0].open(request, True, reply if sole else None)
        deliveries = [answering]
        try:
            deliveries += (tee.open(request, False, None) for tee in sinks[1:])
            body = request.body
            claim = request.claim
            while not answering.stopped:
                data = await body.read()
                if not data:
                    break
                if claim is not None:
                    claim.feed(data)  # once per request, whatever the number of sinks
                for delivery in deliveries:
                    await delivery.write(data)
            if sole:
                receipts = {sinks[0].name: await answering.finish()}
                self._ctx.metrics.sink_latency(sinks[0].name, time.monotonic() - request.received_at)
            else:
                if answering.stopped and not body.drained:
                    # the answering sink took only part of the body: the tees must not keep it
                    for tee_delivery in deliveries[1:]:
                        tee_delivery.abort()
                    deliveries = [answering]
                receipts = await self._finish_all(request.flow.sink_names, deliveries)
                accepted = time.monotonic() - request.received_at
                for name in receipts:
                    self._ctx.metrics.sink_latency(name, accepted)
        except BaseException:
            for delivery in deliveries:
                delivery.abort()
            raise
        await answering.answer(reply, receipts)

    @staticmethod
    async def _finish_all(names: tuple[str, ...], deliveries: list[Delivery]) -> dict[str, Receipt]:
        """Finish every delivery at once; the first failure (in flow order) is the answer."""
        results = await asyncio.gather(*(d.finish() for d in deliveries), return_exceptions=True)
        receipts: dict[str, Receipt] = {}
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                raise result
            receipts[name] = result
        return receipts
