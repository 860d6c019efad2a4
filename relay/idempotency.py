"""Idempotency-Key: scoped to the caller, bound to the request.

A key names one request of one caller: its scope is (flow, issuer, subject, key), or
(flow, key) on a flow with ``auth = "none"``, whose callers are all alike. Each scope
remembers a *fingerprint* of the request that first used it, the SHA-256 of its method,
target and body, together with that request's receipt. A later request in the scope
(as in Stripe's API and the IETF httpapi Idempotency-Key draft):

- with the same fingerprint is a retry: it gets the stored receipt, nothing is kept again;
- with another fingerprint is a mistake: 422 ``idempotency_key_reused``, nothing kept;
- while the first is still in flight: 409 ``idempotency_key_in_flight``, nothing kept.

So a receipt only ever answers the caller (and the request) that earned it. The body is
hashed once per request, as it streams past (``Claim.feed``, called by the exchange),
and only for requests that carry a key to a flow with a sink that remembers keys.

Sinks keep the scopes themselves: a Redis stream in Redis, shared by every worker (see
``relay.sinks.redis_stream``); a file sink in memory, in ``RecentReceipts`` here.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relay.errors import IdempotencyKeyInFlight, IdempotencyKeyReused

if TYPE_CHECKING:
    from relay.request import Request
    from relay.sinks.base import Receipt

__all__ = ["Claim", "RecentReceipts", "Reservation"]


def _framed(*parts: bytes) -> bytes:
    """``parts`` joined so that no two different lists give the same bytes."""
    return b"".join(b"%d:%s" % (len(part), part) for part in parts)


class Claim:
    """One request's Idempotency-Key: its ``scope`` (a digest) and, once the body has
    been fed, its ``fingerprint``."""

    __slots__ = ("scope", "key", "_head", "_body", "_fingerprint")

    def __init__(self, request: Request, key: bytes) -> None:
        identity = request.identity
        caller = (b"",) if identity is None else (identity.issuer.encode("utf-8"), identity.subject.encode("utf-8"))
        self.key = key
        #: SHA-256 of (flow, issuer, subject, key); of (flow, key) for anonymous flows
        self.scope = hashlib.sha256(_framed(request.flow.name.encode("utf-8"), *caller, key)).digest()
        self._head = _framed(request.method.encode("ascii"), request.forward_target)
        self._body = hashlib.sha256()
        self._fingerprint: bytes | None = None

    def feed(self, data: bytes) -> None:
        """The next piece of the body (every piece, in order, before ``fingerprint``)."""
        self._body.update(data)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of (method, target, SHA-256 of the body); the body must be complete."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(_framed(self._head, self._body.digest())).digest()
        return self._fingerprint

    def replay(self, fingerprint: bytes, receipt: Receipt) -> Receipt:
        """The answer to this request when its scope already holds ``fingerprint``'s
        ``receipt``: that receipt for the same request, else 422."""
        if fingerprint != self.fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used for another request")
        return receipt


class Reservation:
    """A scope held in ``RecentReceipts`` by one request in flight, or found settled."""

    __slots__ = ("_store", "_claim", "stored", "_held")

    def __init__(self, store: RecentReceipts, claim: Claim, stored: tuple[bytes, Receipt] | None) -> None:
        self._store = store
        self._claim = claim
        #: the (fingerprint, receipt) a former request settled the scope with, if any
        self.stored = stored
        self._held = stored is None

    async def once(self, accept: Callable[[], Awaitable[Receipt]]) -> Receipt:
        """The stored receipt when this request is a retry (422 if it is another request);
        else ``accept()``'s, which then answers the scope's retries."""
        if self.stored is not None:
            receipt = self._claim.replay(*self.stored)
            self._store.replays += 1
            return receipt
        receipt = await accept()
        if self._held:  # (a release meanwhile means the request was given up)
            self._held = False
            self._store.settle(self._claim, receipt)
        return receipt

    def release(self) -> None:
        """This request failed: the scope is free again. Safe to call more than once."""
        if self._held:
            self._held = False
            self._store.release(self._claim)


class RecentReceipts:
    """Settled scopes of the last ``capacity`` keyed requests, each for ``ttl`` seconds,
    for sinks with no store of their own (the oldest are forgotten first).

    It lives in one process's memory: it is lost on restart and not shared between the
    workers of a multi-process relayd, so a retry after a restart, or one that another
    worker serves, is accepted again. Scopes are kept as digests, so a long key costs no
    more memory than a short one.
    """

    def __init__(self, capacity: int, ttl: float) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._done: OrderedDict[bytes, tuple[float, bytes, Receipt]] = OrderedDict()  # oldest first
        self._pending: set[bytes] = set()
        #: requests answered with a stored receipt instead of being accepted again
        self.replays = 0

    def reserve(self, claim: Claim) -> Reservation:
        """Hold ``claim``'s scope for its request, or find it settled; 409 while another
        request holds it."""
        scope = claim.scope
        if scope in self._pending:
            raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in flight")
        entry = self._done.get(scope)
        if entry is not None:
            stored_at, fingerprint, receipt = entry
            if time.monotonic() - stored_at <= self._ttl:
                return Reservation(self, claim, (fingerprint, receipt))
            del self._done[scope]
        self._pending.add(scope)
        return Reservation(self, claim, None)

    def settle(self, claim: Claim, receipt: Receipt) -> None:
        self._pending.discard(claim.scope)
        now = time.monotonic()
        self._done[claim.scope] = (now, claim.fingerprint, receipt)
        self._done.move_to_end(claim.scope)
        # entries are in settling order, so the expired and the surplus are at the front
        while self._done:
            oldest_at = next(iter(self._done.values()))[0]
            if len(self._done) <= self._capacity and now - oldest_at <= self._ttl:
                break
            self._done.popitem(last=False)

    def release(self, claim: Claim) -> None:
        self._pending.discard(claim.scope)
