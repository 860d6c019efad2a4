"""What an upstream's ``Cache-Control`` allows relay's response cache to do (RFC 9111).

relay's cache is its own, one per flow and per worker, and every entry belongs to a scope:
one subject (issuer + subject), one group, or everyone who passes the flow's checks
("public"). "group" and "public" entries are shared between identities, so they follow
the rules RFC 9111 sets for shared caches: ``private`` and ``Set-Cookie`` answers are not
shared, and ``s-maxage`` overrides ``max-age``. A "subject" entry is never shared, so it
follows the private-cache rules; the RFC's rule on requests with ``Authorization`` (every
relay request has one) is met by the scope itself.

The flow's ``ttl`` is both the default lifetime when the upstream says nothing about
freshness and the upper bound of any lifetime it does state: the operator configured the
cache, so its ``ttl`` stands in for the RFC's heuristic freshness, and caps what an
upstream may ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["subject", "group", "public"]

#: answers stored when the upstream allows it; others pass through uncached
CACHEABLE_STATUSES = frozenset((200, 203, 204, 301, 404))
#: identity headers relay sets that stay the same for every request of one subject's entries
_SAME_PER_SUBJECT = frozenset(("x-relay-subject", "x-relay-issuer", "x-relay-flow"))


@dataclass(frozen=True, slots=True)
class Directives:
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    max_age: int | None = None
    s_maxage: int | None = None


def parse_cache_control(values: list[bytes]) -> Directives:
    """The directives of every ``Cache-Control`` header line of an answer. A malformed
    age counts as 0 (stale at once), as RFC 9111 §4.2.1 advises."""
    found: dict[str, str | None] = {}
    for value in values:
        for item in value.decode("latin-1").split(","):
            name, eq, arg = item.strip().partition("=")
            if name:
                found.setdefault(name.lower(), arg.strip().strip('"') if eq else None)
    return Directives(
        no_store="no-store" in found,
        no_cache="no-cache" in found,
        private="private" in found,
        public="public" in found,
        max_age=_seconds(found, "max-age"),
        s_maxage=_seconds(found, "s-maxage"),
    )


def _seconds(found: dict[str, str | None], name: str) -> int | None:
    if name not in found:
        return None
    arg = found[name]
    return int(arg) if arg is not None and arg.isdigit() else 0


def storable(status: int, cc: Directives, scope: Scope, sets_cookie: bool, vary: list[str]) -> bool:
    """Whether an answer may go into a cache entry of ``scope``."""
    if status not in CACHEABLE_STATUSES or cc.no_store or "*" in vary:
        return False
    # an answer that varies on the identity relay sends (X-Relay-Subject, -Groups, the signed
    # X-Relay-Identity, the request id) differs per caller or per request: only a subject's
    # own entry may keep it, and only when what it varies on is the subject's
    relayed = {name for name in vary if name.startswith("x-relay-")}
    if relayed and (scope != "subject" or not relayed <= _SAME_PER_SUBJECT):
        return False
    if scope != "subject" and (cc.private or sets_cookie):
        return False
    # beyond 200, only answers whose freshness the upstream stated explicitly
    return status == 200 or cc.max_age is not None or cc.s_maxage is not None


def lifetime(cc: Directives, scope: Scope, ttl: float) -> float:
    """How long a stored answer is fresh: 0 means it is revalidated before every use."""
    if cc.no_cache:
        return 0.0
    stated = cc.s_maxage if scope != "subject" and cc.s_maxage is not None else cc.max_age
    return ttl if stated is None else min(float(stated), ttl)
