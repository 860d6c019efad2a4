"""Per-identity rate limits, counted in the worker process (GCRA: one time per key).

Each key of a limit (an issuer and subject, a group, a client address, or the flow as a
whole) keeps one "theoretical arrival time": when its bucket would be empty again at the
limit's rate. A request is admitted while that time lies at most ``burst`` intervals
ahead, and moves it one interval on. A flow's limits are AND-ed: a request is charged to
each only when all admit it, so a refusal by one costs nothing in the others.

Counts are per worker process: with ``server.workers = N`` a client spread over the
workers gets up to N times a limit. Memory is bounded: each limit keeps at most
``MAX_KEYS`` keys, dropping the least recently seen first (a dropped key starts afresh,
with its whole burst).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from relay.config import RateLimit
from relay.errors import RateLimited
from relay.identity import Identity

MAX_KEYS = 100_000
#: float sums of intervals drift by far less; a request exactly at the burst is admitted
_SLACK = 1e-9


class Buckets:
    """Every key's arrival time under one limit."""

    __slots__ = ("config", "policy", "_interval", "_tolerance", "_arrivals", "_max_keys")

    def __init__(self, config: RateLimit, max_keys: int = MAX_KEYS) -> None:
        self.config = config
        #: the RateLimit-Policy field value: the quota per window, in (whole) seconds
        self.policy = f'"{config.name}";q={config.count};w={int(config.period)}'
        self._interval = config.period / config.count
        self._tolerance = config.burst * self._interval * (1 + _SLACK)
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

    def __len__(self) -> int:
        return len(self._arrivals)


class RateLimiter:
    """A flow's limits, checked together before its request's body is read."""

    __slots__ = ("limits", "_clock", "_allowed_groups")

    def __init__(
        self, limits: tuple[Buckets, ...], allowed_groups: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.limits = limits
        #: the groups the flow's allow rule names: "group" counts the caller's first of them
        self._allowed_groups = allowed_groups
        self._clock = clock

    def check(self, identity: Identity | None, client: str | None) -> RateLimited | None:
        """None when every limit admits the request (and it is charged to each), else the refusal."""
        now = self._clock()
        arrivals = []
        for buckets in self.limits:
            key = self._key(buckets.config, identity, client)
            arrival = buckets.next_arrival(key, now)
            wait = buckets.wait(arrival, now)
            if wait:
                return RateLimited(buckets.config.name, buckets.policy, max(1, math.ceil(wait)))
            arrivals.append((buckets, key, arrival))
        for buckets, key, arrival in arrivals:
            buckets.charge(key, arrival)
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
        tuple(Buckets(limit) if old is None else old for limit, old in zip(limits, kept)), allowed_groups
    )
