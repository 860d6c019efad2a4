"""Driving a sink's delivery directly, as the exchange does, on a fresh uvloop loop.

``request_for`` builds a complete request of a one-sink flow (with an Idempotency-Key's
claim when given a key, and a verified caller when given a subject); ``deliver`` opens a
delivery for it, writes the pieces (fingerprinting them, as the exchange does), finishes,
and aborts on failure.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, TypeVar

import uvloop

from relay.config import FlowConfig, ServerConfig
from relay.fastpath import HeaderRules, scan_headers
from relay.flowcontrol import RequestBody
from relay.idempotency import Claim
from relay.identity import Identity
from relay.policy import Flow
from relay.request import Request
from relay.sinks.base import Receipt, Sink

T = TypeVar("T")
_ids = itertools.count()


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a fresh uvloop loop, as relayd does."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def request_for(sink: Sink, flow: str = "ingest", key: bytes | None = None, subject: str | None = None,
                issuer: str = "dev", target: bytes = b"/ingest/x") -> Request:
    """A complete request of ``flow`` (whose sink is ``sink``); the test writes its body."""
    headers = [(b"host", b"relay.test"), (b"transfer-encoding", b"chunked")]
    if key is not None:
        headers.append((b"idempotency-key", key))
    auth: Literal["jwt", "none"] = "none" if subject is None else "jwt"
    flow_object = Flow(FlowConfig(name=flow, path="/ingest/", sink=sink.name, auth=auth), {sink.name: sink},
                       ServerConfig(listen=()), None)
    identity = None if subject is None else Identity(subject, issuer, (), (), {"sub": subject}, None, "k1", 1 << 40)
    loop = asyncio.get_running_loop()
    request = Request(f"req-{next(_ids)}", "POST", "1.1", target.decode(), target,
                      scan_headers(headers, HeaderRules((), (), underscores=False)), flow_object, "127.0.0.1",
                      RequestBody(None, 1 << 40, complete=True), False, loop.time(), identity)
    if key is not None:
        request.claim = Claim(request, key)
    return request


async def deliver(sink: Sink, pieces: Iterable[bytes], flow: str = "ingest", key: bytes | None = None,
                  subject: str | None = None, **request: Any) -> Receipt:
    """What the exchange does for a flow's sink: open, write every piece (fingerprinting
    it when there is a key), finish (abort on failure)."""
    return await deliver_request(sink, request_for(sink, flow, key, subject, **request), pieces)


async def deliver_request(sink: Sink, request: Request, pieces: Iterable[bytes]) -> Receipt:
    delivery = sink.open(request, False, None)
    try:
        for piece in pieces:
            if request.claim is not None:
                request.claim.feed(piece)
            await delivery.write(piece)
        return await delivery.finish()
    except BaseException:
        delivery.abort()
        raise
