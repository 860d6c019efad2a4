"""A caching flow's side of the request path: answer from the cache, or record the answer.

``RecordingReply.answer_from_cache`` runs from the exchange, so only for a request that passed the flow's
authentication and authorization just now; a refused request never reaches it. A fresh
entry of the caller's scope is sent whole (``X-Relay-Cache: hit``, with ``Age``; a client
``If-None-Match`` naming its ETag gets 304; HEAD gets the head). Otherwise the request
goes to the upstream through a ``RecordingReply``, which streams the answer to the client
as any reply does (``X-Relay-Cache: miss``) and tees its body into an ``Intake`` only up
to the per-entry limit, storing it at the end when ``Cache-Control`` allows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relay._config_cache import entry_limit
from relay.cache_control import Scope, lifetime, parse_cache_control, storable
from relay.config import CacheConfig
from relay.identity import Identity
from relay.reply import Reply
from relay.request import Request
from relay.response_cache import Entry, HeaderLookup, Intake, ResponseCache

_HIT = b"X-Relay-Cache: hit\r\n"
_MISS = b"X-Relay-Cache: miss\r\n"


def header_values(block: bytes, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lowercase) in a ``Name: value\\r\\n`` block."""
    found = []
    for line in block.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            found.append(value.strip())
    return found


class FlowCache:
    def __init__(self, config: CacheConfig, groups: tuple[str, ...]) -> None:
        self.scope: Scope = config.scope
        self.ttl = config.ttl
        self._groups = groups
        self.store = ResponseCache(config.max_bytes, entry_limit(config))

    def scope_value(self, identity: Identity | None) -> str:
        if self.scope == "public" or identity is None:
            return ""
        if self.scope == "subject":
            return f"{identity.issuer} {identity.subject}"
        # the first of the flow's allow.groups the caller holds (authorization made sure of one)
        return next((g for g in self._groups if g in identity.groups), "")


def _request_header(forward: bytes) -> HeaderLookup:
    """The request's value of a header (several lines joined), for the Vary part of a key."""
    return lambda name: b", ".join(header_values(forward, name.encode("latin-1")))


def _tags(values: list[bytes]) -> set[bytes]:
    return {tag.strip() for value in values for tag in value.split(b",")}


class RecordingReply(Reply):
    """A reply that also offers a GET's answer to its flow's cache (see the module docstring)."""

    __slots__ = ("_cache", "_request", "_head", "_intake")

    def __init__(self, transport: asyncio.WriteTransport, request: Request, cache: FlowCache,
                 http10: bool, client_paused: bool) -> None:
        super().__init__(transport, request.request_id, request.head_only, http10, request.keep_alive,
                         client_paused)
        self._cache = cache
        self._request = request
        self._head = b""
        #: None unless the answer is a GET's and may still be stored
        self._intake: Intake | None = None

    def answer_from_cache(self) -> bool:
        """Answer from a fresh entry of the request's scope; False when there is none."""
        request = self._request
        forward = request.headers.forward
        store = self._cache.store
        now = time.monotonic()
        entry = store.lookup(self._cache.scope_value(request.identity), request.forward_target,
                             _request_header(forward), now)
        if entry is None:
            return False
        head = entry.headers + _HIT + b"Age: %d\r\n" % int(entry.age(now))
        if entry.etag is not None and entry.etag in _tags(header_values(forward, b"if-none-match")):
            super().send_whole(304, head, (), 0)
        else:
            super().send_whole(entry.status, head, (entry.body,), len(entry.body))
        return True

    def send_whole(self, status: int, headers: bytes, body: Sequence[bytes], length: int) -> None:
        self._note_head(status, headers)
        intake = self._intake
        if intake is not None:
            for piece in body:
                intake.add(piece)
        super().send_whole(status, headers + _MISS, body, length)
        self._store()

    def begin(self, status: int, headers: bytes) -> None:
        self._note_head(status, headers)
        super().begin(status, headers + _MISS)

    def write(self, data: bytes) -> None:
        if self._intake is not None:
            self._intake.add(data)
        super().write(data)

    def end(self) -> None:
        super().end()
        self._store()

    def _note_head(self, status: int, headers: bytes) -> None:
        if self._request.method == "GET" and status in (200, 203, 204, 301, 404):
            self._head = headers
            self._intake = Intake(self._cache.store.max_entry_bytes)

    def _store(self) -> None:
        intake, self._intake = self._intake, None
        body = intake.body() if intake is not None else None
        if body is None:
            return
        cache = self._cache
        head = self._head
        cc = parse_cache_control(header_values(head, b"cache-control"))
        vary = [name.strip().lower().decode("latin-1")
                for value in header_values(head, b"vary") for name in value.split(b",") if name.strip()]
        fresh_for = lifetime(cc, cache.scope, cache.ttl)
        if fresh_for <= 0 or not storable(self.status, cc, cache.scope, bool(header_values(head, b"set-cookie")), vary):
            return
        request = self._request
        forward = request.headers.forward
        etags = header_values(head, b"etag")
        identity = request.identity
        cache.store.store(
            cache.scope_value(identity), request.forward_target, tuple(vary),
            _request_header(forward),
            Entry(self.status, head, body, time.monotonic(), fresh_for, etags[0] if etags else None,
                  subject=identity.subject if identity is not None else ""),
        )
