"""The ``nats-jetstream`` sink: publishes each request body to a JetStream subject.

Each request body becomes one message on ``subject``, and the client is answered only
after the JetStream PubAck: a 2xx means the stream has stored it (durably, as the
stream's storage and replicas allow). The receipt is ``{"stream", "seq", "duplicate"}``,
``seq`` the message's stream sequence (``nats stream get STREAM SEQ`` returns it).
Headers carry ``Relay-Request-Id``, ``Relay-Flow``, ``Relay-Subject`` (for token flows)
and, for keyed requests, ``Relay-Fingerprint`` and ``Nats-Msg-Id``.

JetStream takes a whole message, so the body is held in memory until it is complete; it
is bounded by the server's ``max_payload`` (announced on connect, 1 MiB by default) less
``HEADER_ROOM`` for relay's headers: a longer body is a 413 as soon as it passes that
bound, and nothing is published. Raise ``max_payload`` in nats-server's config for more.

The stream: on the first connection relay looks ``stream`` up; when it is missing relay
creates it with file storage, ``subject`` as its subject, ``discard = new`` (a full
stream refuses new messages rather than dropping stored ones: 503), ``max_bytes`` /
``max_msgs`` when set, and ``duplicate_window``. An existing stream that does not cover
``subject`` is a 502 naming both, on every request, until it is fixed.

Idempotency (``relay.idempotency``): the sink keeps a request's scope in this process's
memory (``RecentReceipts``: 409 while in flight, the receipt for a retry, 422 for another
body) and publishes it as ``Nats-Msg-Id`` (the scope's hex digest), so the server also
drops a retry it sees again within the stream's duplicate window, after a relayd restart
or from another worker too. Such a PubAck says ``duplicate``: relay then reads the stored
message back and compares its ``Relay-Fingerprint``, answering the first message's
receipt for the same request and 422 for another; both layers agree. Past the window a
retry is stored again: set ``duplicate_window`` at least as long as clients retry.

Failures: connecting must succeed within ``connect_timeout`` (a dead server → 503 at
once); the publish must be acknowledged within ``timeout`` (else 504: it may have been
stored, so retry with an Idempotency-Key). While connected the client reconnects by
itself, across the ``url`` list; publishes meanwhile wait at most ``timeout``.
A full stream, a stream without a leader, no responders → 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from relay.config import NatsJetStreamSinkConfig
from relay.errors import BadGateway, GatewayTimeout, PayloadTooLarge, RelayError, ServiceUnavailable
from relay.idempotency import Claim, RecentReceipts, Reservation
from relay.reply import Reply
from relay.request import Request
from relay.sinks.base import Receipt, SinkSlots, send_receipt

__all__ = ["NatsJetStreamSink"]

log = logging.getLogger("relay.sinks.nats_jetstream")

#: keyed requests whose receipts this process remembers (the broker remembers more)
IDEMPOTENCY_KEYS = 100_000
#: JetStream API error codes for a stream that is full (messages, bytes, per subject)
_FULL_CODES = frozenset({10077, 10078, 10047, 10027})
_DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: what relay's headers may take of a message's max_payload (ids, flow, subject, digests)
HEADER_ROOM = 1024


class NatsJetStreamSink:
    """Publishes each request body to ``config.subject`` (see the module docstring)."""

    remembers_keys = True

    def __init__(self, config: NatsJetStreamSinkConfig) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.config = config
        self.recent = RecentReceipts(IDEMPOTENCY_KEYS, config.idempotency_ttl)
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Lock | None = None
        self._stream_problem: str | None = None
        self._published = 0
        self._duplicates = 0
        self._failures = 0

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> None:
        return None  # delivered the general way

    def open(self, request: Request, answers: bool, reply: Reply | None) -> NatsDelivery:
        return NatsDelivery(self, request)

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its default until connected)."""
        client = self._client
        return client.max_payload if client is not None and client.is_connected else _DEFAULT_MAX_PAYLOAD

    @property
    def state(self) -> str:
        """``connected``, ``reconnecting``, ``disconnected`` (not yet, or given up)."""
        client = self._client
        if client is None or client.is_closed:
            return "disconnected"
        return "reconnecting" if client.is_reconnecting else "connected"

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting (and checking the stream) on first use."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._js is None or self._client is None or self._client.is_closed:
                await self._connect()
            if self._stream_problem is not None:
                raise BadGateway(self._stream_problem, self.name)
            assert self._js is not None
            return self._js

    async def _connect(self) -> None:
        config = self.config
        options: dict[str, Any] = {
            "servers": list(config.urls), "connect_timeout": config.connect_timeout,
            # one quick try per server after a disconnection; then the client closes and the
            # next request connects anew (a dead server costs each request connect_timeout)
            "allow_reconnect": True, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.2,
            "name": f"relay sink {config.name}", "error_cb": self._on_error,
        }
        if config.credentials_file is not None:
            options["user_credentials"] = config.credentials_file
        if config.nkey_file is not None:
            options["nkeys_seed"] = config.nkey_file
        if config.token is not None:
            options["token"] = config.token
        if config.user is not None:
            options["user"], options["password"] = config.user, config.password
        try:
            self._client = await asyncio.wait_for(nats.connect(**options),
                                                  config.connect_timeout * len(config.urls) + 0.5)
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            raise self.failed(ServiceUnavailable(f"cannot connect to NATS: {exc!r}", self.name)) from None
        self._js = self._client.jetstream(timeout=config.timeout)
        self._stream_problem = None
        await self._ensure_stream()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats-jetstream sink %s: %r", self.name, exc)

    async def _ensure_stream(self) -> None:
        """Create the stream when missing; note a problem when it misses the subject."""
        config, js = self.config, self._js
        assert js is not None
        try:
            info = await js.stream_info(config.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(
                name=config.stream, subjects=[config.subject], storage=StorageType.FILE,
                discard=DiscardPolicy.NEW, duplicate_window=config.duplicate_window,
                max_bytes=config.max_bytes or -1, max_msgs=config.max_msgs or -1))
            log.info("nats-jetstream sink %s: created stream %s", self.name, config.stream)
            return
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            await self._drop()
            raise self.failed(ServiceUnavailable(f"cannot look up stream {config.stream}: {exc!r}",
                                                 self.name)) from None
        subjects = info.config.subjects or []
        if not any(_covers(pattern, config.subject) for pattern in subjects):
            self._stream_problem = (f"stream {config.stream} does not take subject {config.subject} "
                                    f"(its subjects: {', '.join(subjects) or 'none'})")
            log.error("nats-jetstream sink %s: %s", self.name, self._stream_problem)

    async def _drop(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None:
            await client.close()

    def failed(self, err: RelayError) -> RelayError:
        self._failures += 1
        log.warning("nats-jetstream sink %s: %s", self.name, err.detail)
        return err

    async def publish(self, request: Request, body: bytes, claim: Claim | None) -> Receipt:
        """Publish ``body``; the receipt once the stream has acknowledged it."""
        js = await self._jetstream()
        headers = {"Relay-Request-Id": request.request_id, "Relay-Flow": request.flow.name}
        if request.identity is not None:
            headers["Relay-Subject"] = request.identity.subject
        if claim is not None:
            headers["Nats-Msg-Id"] = claim.scope.hex()
            headers["Relay-Fingerprint"] = claim.fingerprint.hex()
        try:
            ack = await js.publish(self.config.subject, body, timeout=self.config.timeout,
                                   stream=self.config.stream, headers=headers)
        except nats.errors.TimeoutError:
            raise self.failed(GatewayTimeout(f"no PubAck within {self.config.timeout:g}s", self.name)) from None
        except nats.js.errors.APIError as exc:
            raise self.failed(self._refusal(exc)) from None
        except (nats.errors.Error, OSError) as exc:
            raise self.failed(ServiceUnavailable(f"NATS publish failed: {exc!r}", self.name)) from None
        receipt: Receipt = {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}
        if not ack.duplicate:
            self._published += 1
            return receipt
        self._duplicates += 1
        if claim is not None:
            await self._check_duplicate(js, ack.seq, claim)
        return receipt

    def _refusal(self, exc: nats.js.errors.APIError) -> RelayError:
        detail = f"JetStream refused the message: {exc.description} (code {exc.err_code})"
        if exc.err_code in _FULL_CODES or (exc.code or 0) >= 500:
            return ServiceUnavailable(detail, self.name)
        return BadGateway(detail, self.name)

    async def _check_duplicate(self, js: JetStreamContext, seq: int, claim: Claim) -> None:
        """A duplicate PubAck: 422 unless the stored message is this very request."""
        try:
            stored = await js.get_msg(self.config.stream, seq)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise self.failed(ServiceUnavailable(f"cannot read back message {seq}: {exc!r}", self.name)) from None
        fingerprint = bytes.fromhex((stored.headers or {}).get("Relay-Fingerprint", ""))
        claim.replay(fingerprint, {})  # raises IdempotencyKeyReused for another body

    def stats(self) -> dict[str, int | str]:
        """Counters and the connection's state."""
        return {"published": self._published, "duplicates": self._duplicates, "replays": self.recent.replays,
                "failures": self._failures, "state": self.state}

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            await client.drain()


def _covers(pattern: str, subject: str) -> bool:
    """Whether the subject ``pattern`` (``*``, ``>`` wildcards) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


class NatsDelivery:
    """One request's body, held until complete (bounded by ``max_payload``), then published."""

    __slots__ = ("_sink", "_request", "_pieces", "_size", "_reservation")

    stopped = False  # a message takes the whole body

    def __init__(self, sink: NatsJetStreamSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        self._pieces: list[bytes] = []
        self._size = 0
        claim = request.claim
        self._reservation: Reservation | None = None if claim is None else sink.recent.reserve(claim)  # or 409

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        limit = self._sink.max_payload - HEADER_ROOM
        if self._size > limit:
            raise PayloadTooLarge(f"the NATS server takes messages of at most {limit} bytes")
        self._pieces.append(data)

    async def finish(self) -> Receipt:
        body = b"".join(self._pieces)
        self._pieces = []
        claim = self._request.claim
        if self._reservation is None:
            return await self._sink.publish(self._request, body, None)
        return await self._reservation.once(lambda: self._sink.publish(self._request, body, claim))

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        send_receipt(reply, self._request, receipts, None)

    def abort(self) -> None:
        self._pieces = []
        if self._reservation is not None:
            self._reservation.release()
