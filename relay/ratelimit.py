"""Per-identity rate limits (GCRA: one time per key), counted in the worker process or in Redis.

Each key of a limit (an issuer and subject, a group, a client address, or the flow as a
whole) keeps one "theoretical arrival time": when its bucket would be empty again at the
limit's rate. A request is admitted while that time lies at most ``burst`` intervals
ahead, and moves it one interval on. A flow's limits are AND-ed: a request is charged to
each only when all admit it, so a refusal by one costs nothing in the others.

Counts are per worker process: with ``server.workers = N`` a client spread over the
workers gets up to N times a limit. Memory is bounded: each limit keeps at most
``MAX_KEYS`` keys, dropping the least recently seen first (a dropped key starts afresh,
with its whole burst).

A limit with ``mode = "shared"`` is counted in Redis instead, for every relayd behind
the proxy at once (``relay.ratelimit_shared``): the local limits are checked (and
charged) as the head is parsed, the shared ones after, in one call to Redis, before the
body is read. When the shared ones refuse, the local charges are given back, so a
refused request costs no limit anything. When Redis cannot be asked, the flow's
``shared_state`` decides: "fail-closed" answers 503, "fail-open" counts the shared
limits in this process meanwhile (so each instance admits up to the limit).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from relay.config import RateLimit
from relay.errors import RateLimited, RateLimitUnavailable, RelayError
from relay.identity import Identity
from relay.metrics_ratelimit import RateLimitRow
from relay.ratelimit_shared import charge_shared

if TYPE_CHECKING:
    from relay.shared import SharedState

log = logging.getLogger(__name__)

MAX_KEYS = 100_000
#: float sums of intervals drift by far less; a request exactly at the burst is admitted
_SLACK = 1e-9


class Buckets:
    """Every key's arrival time under one limit."""

    __slots__ = (
        "config", "policy", "interval_us", "tolerance_us", "admitted", "limited", "errors",
        "_interval", "_tolerance", "_arrivals", "_max_keys",
    )

    def __init__(self, config: RateLimit, max_keys: int = MAX_KEYS) -> None:
        self.config = config
        #: the RateLimit-Policy field value: the quota per window, in (whole) seconds
        self.policy = f'"{config.name}";q={config.count};w={int(config.period)}'
        self._interval = config.period / config.count
        self._tolerance = config.burst * self._interval * (1 + _SLACK)
        #: the same, as the shared limit's script takes them
        self.interval_us = self._interval * 1e6
        self.tolerance_us = self._tolerance * 1e6
        #: requests charged, refused by this limit, and checks Redis could not answer
        self.admitted = self.limited = self.errors = 0
        self._arrivals: OrderedDict[str, float] = OrderedDict()
        self._max_keys = max_keys

    def next_arrival(self, key: str, now: float) -> float:
        """The key's arrival time should one more request be admitted now."""
        return max(self._arrivals.get(key, now), now) + self._interval

    def wait(self, arrival: float, now: float) -> float:
        """Seconds until a request moving the time to ``arrival`` fits; 0 if it does now."""
        return max(0.0, arrival - now - self._tolerance)

    def charge(self, key: str, arrival: float) -> None:
        arrivals = self._arrivals
        arrivals[key] = arrival
        arrivals.move_to_end(key)
        if len(arrivals) > self._max_keys:
            arrivals.popitem(last=False)

    def refund(self, key: str) -> None:
        """Give back one charge (the request was refused by a limit checked later)."""
        arrival = self._arrivals.get(key)
        if arrival is not None:
            self._arrivals[key] = arrival - self._interval
        self.admitted -= 1

    def __len__(self) -> int:
        return len(self._arrivals)


class RateLimiter:
    """A flow's limits, checked together before its request's body is read."""

    __slots__ = ("limits", "local", "shared", "_flow", "_clock", "_allowed_groups", "_unreachable")

    def __init__(
        self, limits: tuple[Buckets, ...], allowed_groups: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic, flow: str = "",
    ) -> None:  # fmt: skip
        self.limits = limits
        self.local = tuple(buckets for buckets in limits if buckets.config.mode == "local")
        #: counted in Redis (``check_shared``); empty when the flow has none
        self.shared = tuple(buckets for buckets in limits if buckets.config.mode == "shared")
        #: the groups the flow's allow rule names: "group" counts the caller's first of them
        self._allowed_groups = allowed_groups
        self._clock = clock
        self._flow = flow
        #: the last shared check failed: logged once per outage, not per request
        self._unreachable = False

    def check(self, identity: Identity | None, client: str | None) -> RateLimited | None:
        """None when every local limit admits the request (and it is charged to each), else the refusal."""
        return self._check_here(self.local, identity, client)

    async def check_shared(
        self, shared: SharedState | None, identity: Identity | None, client: str | None, fail_closed: bool,
    ) -> RelayError | None:  # fmt: skip
        """After ``check`` admitted: None when every shared limit admits too (each charged),
        else the refusal, with the local charges given back."""
        limits = self.shared
        keys = [self._key(buckets.config, identity, client) for buckets in limits]
        refusal: RelayError | None = None
        try:
            if shared is None:
                raise ConnectionError("[shared] redis is not in effect (setting it takes a restart)")
            refusing, wait = await charge_shared(shared, self._flow, limits, keys)
        except ConnectionError as exc:
            refusal = self._unanswered(exc, fail_closed, identity, client, keys)
        else:
            if self._unreachable:
                self._unreachable = False
                log.info("rate limits of flow %s counted in Redis again", self._flow)
            if refusing:
                refusal = _refusal(limits[refusing - 1], wait)
            else:
                for buckets in limits:
                    buckets.admitted += 1
        if refusal is not None:
            for buckets in self.local:
                buckets.refund(self._key(buckets.config, identity, client))
        return refusal

    def _unanswered(self, exc: ConnectionError, fail_closed: bool, identity: Identity | None,
                    client: str | None, keys: list[str]) -> RelayError | None:
        """Redis could not be asked: the flow's shared_state policy answers."""
        for buckets in self.shared:
            buckets.errors += 1
        if not self._unreachable:
            self._unreachable = True
            log.warning("rate limits of flow %s cannot be counted in Redis (%s): %s", self._flow, exc,
                        "refusing with 503" if fail_closed else "counting them in this process meanwhile")
        if fail_closed:
            name = self.shared[0].config.name
            return RateLimitUnavailable(f"shared rate limit '{name}' cannot be checked: {exc}", retry_after=1)
        return self._check_here(self.shared, identity, client, keys)

    def _check_here(self, limits: Sequence[Buckets], identity: Identity | None, client: str | None,
                    keys: Sequence[str] | None = None) -> RateLimited | None:
        now = self._clock()
        arrivals = []
        for i, buckets in enumerate(limits):
            key = self._key(buckets.config, identity, client) if keys is None else keys[i]
            arrival = buckets.next_arrival(key, now)
            wait = buckets.wait(arrival, now)
            if wait:
                return _refusal(buckets, wait)
            arrivals.append((buckets, key, arrival))
        for buckets, key, arrival in arrivals:
            buckets.charge(key, arrival)
            buckets.admitted += 1
        return None

    def _key(self, limit: RateLimit, identity: Identity | None, client: str | None) -> str:
        per = limit.per
        if per == "client":
            return client or ""  # a Unix-socket client naming no address: one shared bucket
        if per == "flow" or identity is None:
            return ""
        if per == "subject":
            return f"{identity.issuer}\0{identity.subject}"
        return _group_of(identity.groups, self._allowed_groups)


def _refusal(buckets: Buckets, wait: float) -> RateLimited:
    buckets.limited += 1
    return RateLimited(buckets.config.name, buckets.policy, max(1, math.ceil(wait)))


def _group_of(groups: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    """The group a caller is counted under: its first group the allow rule names (or its
    first group when the rule names none); callers without one share the bucket ""."""
    if allowed:
        return next((group for group in groups if group in allowed), "")
    return groups[0] if groups else ""


def build_limiter(
    name: str, limits: tuple[RateLimit, ...], allowed_groups: tuple[str, ...],
    previous: Mapping[tuple[str, RateLimit], Buckets],
) -> RateLimiter | None:  # fmt: skip
    """The flow's limiter, keeping the buckets of limits the previous policy had unchanged."""
    if not limits:
        return None
    kept = [previous.get((name, limit)) for limit in limits]
    return RateLimiter(
        tuple(Buckets(limit) if old is None else old for limit, old in zip(limits, kept)), allowed_groups, flow=name
    )


def limit_counts(limiters: Iterable[tuple[str, RateLimiter | None]]) -> list[RateLimitRow]:
    """Each limit's counters, for the metrics: ``limiters`` are the flows' by flow name."""
    return [
        RateLimitRow(flow=flow, limit=buckets.config.name, mode=buckets.config.mode,
                     admitted=buckets.admitted, limited=buckets.limited, errors=buckets.errors)
        for flow, limiter in limiters if limiter is not None
        for buckets in limiter.limits
    ]
