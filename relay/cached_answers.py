"""A caching flow's side of the request path: answer from the cache, or record the answer.

``RecordingReply.answer_from_cache`` runs from the exchange, so only for a request that
passed the flow's authentication and authorization just now; a refused request never
reaches it. A fresh entry of the caller's scope is sent whole (``X-Relay-Cache: hit``,
with ``Age``; HEAD gets the head). A stale entry with a validator is revalidated: the
request goes to the upstream with the entry's ``ETag`` / ``Last-Modified`` as its
conditionals, and a 304 refreshes the entry's head and lifetime and answers from it
(``X-Relay-Cache: revalidated``). Otherwise the request goes to the upstream, without the
client's conditionals, through the ``RecordingReply``, which streams the answer to the
client as any reply does (``X-Relay-Cache: miss``) and tees its body into an ``Intake``
only up to the per-entry limit, storing it at the end when ``Cache-Control`` allows. In
every case a client's own ``If-None-Match`` / ``If-Modified-Since`` is answered by relay
from the answer's validators: 304 when they match (the body, on a miss, still goes into
the entry).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relay._config_cache import entry_limit
from relay.cache_control import CACHEABLE_STATUSES, Scope, lifetime, parse_cache_control, storable
from relay.conditional import NOT_MODIFIED_FIELDS, not_modified, revalidation_headers, without_conditionals
from relay.config import CacheConfig
from relay.header_block import header_values, list_items, only_fields, updated_with
from relay.identity import Identity
from relay.reply import Reply
from relay.request import Request
from relay.response_cache import CacheCounters, Entry, HeaderLookup, Intake, ResponseCache

_HIT = b"X-Relay-Cache: hit\r\n"
_MISS = b"X-Relay-Cache: miss\r\n"
_REVALIDATED = b"X-Relay-Cache: revalidated\r\n"
#: stored answers a client's conditional request is evaluated against (RFC 9110 §13.2.1: 2xx)
_CONDITIONAL_STATUSES = frozenset((200, 203, 204))


class FlowCache:
    def __init__(self, config: CacheConfig, groups: tuple[str, ...], counters: CacheCounters | None = None) -> None:
        self.scope: Scope = config.scope
        self.ttl = config.ttl
        self._groups = groups
        self.store = ResponseCache(config.max_bytes, entry_limit(config), counters)

    @property
    def counters(self) -> CacheCounters:
        return self.store.counters

    def scope_value(self, identity: Identity | None) -> str | None:
        """The caller's part of every key; None when it has none here (then the cache is
        neither read nor written for the request)."""
        if self.scope == "public":
            return ""
        if identity is None:
            return None
        if self.scope == "subject":
            return f"{identity.issuer} {identity.subject}"
        # the first of the flow's allow.groups the caller holds; a token relay issued for the
        # flow passes without the group rule, and may hold none of them
        return next((g for g in self._groups if g in identity.groups), None)


def _request_header(request: Request) -> HeaderLookup:
    """The value of a header (several lines joined) as the upstream received it, for the Vary
    part of a key: the client's, or for Host and X-Forwarded-For what relay sent in their place
    (identity headers are kept out by ``storable``). Authorization is the client's even when
    the flow does not forward it: an answer that varies on it is one caller's, and the upstream
    told who the caller is in relay's identity headers instead."""
    forward = request.headers.forward
    client = request.client.encode("latin-1") if request.client else b""

    def value(name: str) -> bytes:
        if name == "host":
            return request.host or b""
        if name == "x-forwarded-for":
            return client
        if name == "authorization":
            return request.headers.authorization or b""
        return b", ".join(header_values(forward, name.encode("latin-1")))

    return value


def _cache_target(request: Request) -> bytes:
    """The key's target: the Host forwarded and the target, since the upstream receives the
    client's Host and may answer each virtual host differently (RFC 9111 §4: the key is the
    target URI, authority included). A Host holds no space, so the two cannot run together."""
    return (request.host or b"") + b" " + request.forward_target


def _first(block: bytes, name: bytes) -> bytes | None:
    values = header_values(block, name)
    return values[0] if values else None


class RecordingReply(Reply):
    """A reply that also offers a GET's answer to its flow's cache (see the module docstring)."""

    __slots__ = ("_cache", "_request", "_scope", "_status", "_head", "_intake", "_stale", "result")

    def __init__(self, transport: asyncio.WriteTransport, request: Request, cache: FlowCache, *,
                 http10: bool, client_paused: bool) -> None:
        super().__init__(transport, request.request_id, head_only=request.head_only, http10=http10,
                         keep_alive=request.keep_alive, client_paused=client_paused)
        self._cache = cache
        self._request = request
        self._scope = cache.scope_value(request.identity)
        #: the upstream's status and head, as it answered (the client may get a 304 instead)
        self._status = 0
        self._head = b""
        #: None unless the answer is a GET's and may still be stored
        self._intake: Intake | None = None
        #: the stale entry the request revalidates, until the upstream's answer is in
        self._stale: Entry | None = None
        #: how the cache answered, for the audit record: "hit", "miss" or "revalidated"
        #: ("" until it was asked)
        self.result = ""

    def answer_from_cache(self) -> bool:
        """Answer from a fresh entry of the request's scope; False when the request goes to
        the upstream (no entry, or a stale one to revalidate)."""
        self.result = "miss"
        scope = self._scope
        counters = self._cache.counters
        if scope is None:
            counters.misses += 1
            return False
        request = self._request
        forward = request.headers.forward
        now = time.monotonic()
        entry = self._cache.store.lookup(scope, _cache_target(request), _request_header(request), now)
        if entry is None:
            counters.misses += 1
            if request.method == "GET":
                request.forward_headers = without_conditionals(forward)
            return False
        if not entry.fresh(now):
            self._stale = entry
            request.forward_headers = revalidation_headers(forward, entry.etag, entry.last_modified)
            return False
        counters.hits += 1
        self.result = "hit"
        self._answer_with(entry, _HIT, now)
        return True

    def _not_modified(self, status: int, headers: bytes, etag: bytes | None, last_modified: bytes | None,
                      extra: bytes) -> bool:
        """Answer 304 when the client's conditionals hold for this answer (True)."""
        if status not in _CONDITIONAL_STATUSES or not not_modified(self._request.headers.forward, etag, last_modified):
            return False
        super().send_whole(304, only_fields(headers, NOT_MODIFIED_FIELDS) + extra, (), 0)
        return True

    def _answer_with(self, entry: Entry, marker: bytes, now: float) -> None:
        age = b"Age: %d\r\n" % int(entry.age(now))
        if self._not_modified(entry.status, entry.headers, entry.etag, entry.last_modified, marker + age):
            return
        super().send_whole(entry.status, entry.headers + marker + age, (entry.body,), len(entry.body))
        if not self._request.head_only:
            self._cache.counters.served_bytes += len(entry.body)

    def send_whole(self, status: int, headers: bytes, body: Sequence[bytes], length: int) -> None:
        if self._revalidated(status, headers):
            return
        self._note_head(status, headers)
        intake = self._intake
        if intake is not None:
            for piece in body:
                intake.add(piece)
        if not self._fetched_not_modified(status, headers):
            super().send_whole(status, headers + _MISS, body, length)
        self._store()

    def begin(self, status: int, headers: bytes) -> None:
        if self._revalidated(status, headers):
            return  # what the upstream still writes goes nowhere: the reply is done
        self._note_head(status, headers)
        if not self._fetched_not_modified(status, headers):
            super().begin(status, headers + _MISS)
        # else the body still goes into the intake (write), not to the client

    def _fetched_not_modified(self, status: int, headers: bytes) -> bool:
        """A fetched answer the client's conditionals hold for: 304 to the client."""
        if self.result != "miss" or self._request.method != "GET":
            return False
        return self._not_modified(status, headers, _first(headers, b"etag"), _first(headers, b"last-modified"), _MISS)

    def write(self, data: bytes) -> None:
        if self._intake is not None:
            self._intake.add(data)
        super().write(data)

    def end(self) -> None:
        super().end()
        self._store()

    def _revalidated(self, status: int, headers: bytes) -> bool:
        """The upstream's answer to a revalidation: a 304 refreshes the stale entry (its
        head updated with the 304's fields, RFC 9111 §4.3.4) and answers from it (True);
        anything else replaces it (False: the answer goes on as a miss)."""
        stale, self._stale = self._stale, None
        if stale is None:
            return False
        assert self._scope is not None
        cache = self._cache
        request = self._request
        lookup = _request_header(request)
        if status != 304:
            cache.store.forget(self._scope, _cache_target(request), lookup)
            cache.counters.misses += 1
            return False
        now = time.monotonic()
        refreshed = self._entry(stale.status, updated_with(stale.headers, headers), stale.body, now)
        if refreshed is None:
            cache.store.forget(self._scope, _cache_target(request), lookup)
        else:
            self._keep(*refreshed)
        cache.counters.revalidated += 1
        self.result = "revalidated"
        self._answer_with(refreshed[0] if refreshed is not None else stale, _REVALIDATED, now)
        return True

    def _note_head(self, status: int, headers: bytes) -> None:
        if self._request.method == "GET" and self._scope is not None and status in CACHEABLE_STATUSES:
            self._status = status
            self._head = headers
            self._intake = Intake(self._cache.store.max_entry_bytes)

    def _store(self) -> None:
        intake, self._intake = self._intake, None
        body = intake.body() if intake is not None else None
        if body is None:
            return
        kept = self._entry(self._status, self._head, body, time.monotonic())
        if kept is not None:
            self._keep(*kept)

    def _entry(self, status: int, head: bytes, body: bytes, now: float) -> tuple[Entry, tuple[str, ...]] | None:
        """The entry an answer makes, and the request headers its ``Vary`` names; None when
        its ``Cache-Control`` (or the scope) forbids keeping it, or it would be stale at once
        with nothing to revalidate it by."""
        cache = self._cache
        cc = parse_cache_control(header_values(head, b"cache-control"))
        vary = tuple(name.decode("latin-1").lower() for name in list_items(header_values(head, b"vary")))
        if not storable(status, cc, cache.scope, bool(header_values(head, b"set-cookie")), list(vary)):
            return None
        etag, last_modified = _first(head, b"etag"), _first(head, b"last-modified")
        fresh_for = lifetime(cc, cache.scope, cache.ttl)
        if fresh_for <= 0 and etag is None and last_modified is None:
            return None
        identity = self._request.identity
        entry = Entry(status, head, body, now, fresh_for, etag, last_modified,
                      subject=identity.subject if identity is not None else "")
        return entry, vary

    def _keep(self, entry: Entry, vary: tuple[str, ...]) -> None:
        assert self._scope is not None
        request = self._request
        self._cache.store.store(self._scope, _cache_target(request), vary, _request_header(request), entry)
