"""Authentication of requests: bearer token → verified :class:`Identity`, or 401.

``Authenticator.authenticate`` is synchronous and runs on the event loop for every
request. It looks the raw token up in the verified-token cache first (keyed on the
token bytes and the key generation, so nothing is parsed on a hit), then re-checks
what can change while a token sits in the cache: its expiry (the cache does), the
flow's issuers and revocation. A miss runs the full check in ``relay.identity.verify``
and caches the result. Key fetching never happens on the request path: the per-issuer
tasks of ``relay.identity.keys`` do it in the background.

The generation is bumped whenever a cached identity may have become wrong: a key was
removed or replaced, or the issuer configuration was reloaded. Every cached entry of
an older generation is then a miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NoReturn

from relay.config import IssuerConfig
from relay.errors import Unauthorized
from relay.fastpath import TokenCache
from relay.identity.claims import Identity
from relay.identity.jose import parse_compact
from relay.identity.keys import FETCH_TIMEOUT, REFETCH_COOLDOWN, IssuerKeys, KeyStatus, key_source
from relay.identity.revocation import RevocationEntry, RevocationKind, Revocations
from relay.identity.verify import Issuer

if TYPE_CHECKING:
    from relay.tokens.own import OwnTokens

__all__ = ["CACHE_CAPACITY", "Authenticator"]

log = logging.getLogger(__name__)

_MAX_TOKEN_BYTES = 64 * 1024  # the largest max_token_bytes the configuration allows
CACHE_CAPACITY = 10_000  # tokens; at the default 8 KiB cap per token at most ~80 MiB, typically ~10 MiB


def _fail(reason: str, detail: str) -> NoReturn:
    raise Unauthorized(detail, reason=reason)


class Authenticator:
    """Verifies bearer tokens of the configured issuers. Lives on one event loop."""

    def __init__(
        self,
        issuers: tuple[IssuerConfig, ...],
        *,
        cache_capacity: int = CACHE_CAPACITY,
        refetch_cooldown: float = REFETCH_COOLDOWN,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        """``refetch_cooldown``: least seconds between fetches an unknown kid may trigger;
        ``fetch_timeout``: seconds for one whole key fetch."""
        self._cooldown = refetch_cooldown
        self._timeout = fetch_timeout
        self._cache = TokenCache(cache_capacity)
        self._generation = 0
        self._revocations = Revocations()
        self._started = False
        self._by_name: dict[str, Issuer] = {}
        self._by_iss: dict[str, Issuer] = {}
        self._max_token_bytes = 0
        #: relay's own tokens, accepted when it issues them
        self._own: OwnTokens | None = None
        self._install(issuers)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load every issuer's keys (a failure is logged, not raised) and start their refresh tasks."""
        self._started = True
        issuers = list(self._by_name.values())
        await asyncio.gather(*(i.keys.refresh() for i in issuers))
        for issuer in issuers:
            issuer.keys.run()

    async def close(self) -> None:
        """Stop the refresh tasks and wait for them to end."""
        self._started = False
        tasks = [t for i in self._by_name.values() if (t := i.keys.stop()) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def update(self, issuers: tuple[IssuerConfig, ...]) -> None:
        """Swap in a reloaded issuer list. Issuers whose ``issuer`` and key source are
        unchanged keep their keys; others start fetching in the background. Cached tokens
        are verified again. Call on the event loop."""
        old = self._by_name
        self._install(issuers, old)
        kept = {id(i.keys) for i in self._by_name.values()}
        for issuer in old.values():
            if id(issuer.keys) not in kept:
                issuer.keys.stop()
        if self._started:
            for issuer in self._by_name.values():
                issuer.keys.run()

    def _install(self, configs: tuple[IssuerConfig, ...], old: dict[str, Issuer] | None = None) -> None:
        # keys follow their source (issuer URL + where its keys come from), not the name
        kept = {key_source(i.config): i.keys for i in (old or {}).values()}
        by_name: dict[str, Issuer] = {}
        for config in configs:
            keys = kept.get(key_source(config))
            if keys is not None:
                keys.adopt(config)
            else:
                keys = IssuerKeys(config, self._keys_removed, cooldown=self._cooldown, timeout=self._timeout)
            by_name[config.name] = Issuer(config, keys)
        self._by_name = by_name
        self._by_iss = {i.config.issuer: i for i in by_name.values()}
        # checked before the issuer is known; with no issuer at all, tokens fail on "issuer"
        self._max_token_bytes = max((c.max_token_bytes for c in configs), default=_MAX_TOKEN_BYTES)
        self._generation += 1  # audiences, algorithms or claim mapping may differ now

    def trust_own(self, own: OwnTokens | None) -> None:
        """Accept the tokens relay issues (its token endpoint), or stop accepting them."""
        self._own = own
        self._generation += 1

    def _keys_removed(self) -> None:
        self._generation += 1

    # -- the request path -------------------------------------------------------------

    def authenticate(self, authorization: bytes | None, allowed_issuers: tuple[str, ...]) -> Identity:
        """The identity proven by an ``Authorization: Bearer <token>`` value.

        ``allowed_issuers`` are the issuer names the flow accepts (empty: all). Raises
        Unauthorized with the audit reason: missing, malformed, too_large, issuer,
        algorithm, unknown_kid, bad_signature, expired, not_yet_valid, audience, revoked.
        """
        if authorization is None:
            _fail("missing", "no Authorization header")
        now = time.time()
        # keyed on the whole header value, so a hit costs no slicing: only a value that
        # passed every check below was ever put in
        identity = self._cache.get(authorization, self._generation, now)
        if identity is None:
            identity = self._verify(authorization, now)
        if allowed_issuers and identity.issuer not in allowed_issuers:
            _fail("issuer", f"issuer {identity.issuer} is not accepted by this flow")
        if self._revocations.active and (kind := self._revocations.match(identity, now)) is not None:
            _fail("revoked", f"token revoked by {kind}")
        return identity

    def _verify(self, authorization: bytes, now: float) -> Identity:
        if authorization[:7].lower() != b"bearer ":
            if authorization[:7].lower().rstrip(b" \t") == b"bearer":
                _fail("malformed", "write the header as 'Authorization: Bearer <token>'")
            _fail("missing", "the Authorization scheme is not Bearer")
        token = authorization[7:]
        if len(token) > self._max_token_bytes:
            _fail("too_large", f"token of {len(token)} bytes is over the limit")
        compact = parse_compact(token)
        iss = compact.payload.get("iss")
        own = self._own
        if own is not None and iss == own.issuer:
            identity, cache_until = own.verify(compact, now)
            self._cache.put(authorization, self._generation, identity, cache_until)
            return identity
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            _fail("issuer", f"issuer {str(iss)[:128]!r} is not configured")
        if len(token) > issuer.config.max_token_bytes:
            _fail("too_large", f"token of {len(token)} bytes is over issuer {issuer.name}'s limit")
        identity, cache_until = issuer.verify(compact, now)
        self._cache.put(authorization, self._generation, identity, cache_until)
        return identity

    # -- operations (admin socket) ----------------------------------------------------

    def revoke(self, kind: RevocationKind, value: str, ttl: float) -> float:
        """Refuse tokens with this jti, subject or kid for ``ttl`` seconds, cached ones
        included; returns when the revocation lapses. Raises ValueError for a bad kind,
        value or ttl."""
        until = self._revocations.add(kind, value, ttl, time.time())
        log.warning("revoked %s %r for %gs", kind, value, ttl)
        return until

    def restore(self, entries: list[RevocationEntry]) -> None:
        """Hold revocations saved earlier (the state file), before serving."""
        self._revocations.restore(entries, time.time())

    def revocations(self) -> list[RevocationEntry]:
        return self._revocations.entries(time.time())

    def cache_stats(self) -> dict[str, int]:
        """The token cache's counters (size, capacity, hits, misses, evictions) and the key generation."""
        return {**self._cache.stats(), "generation": self._generation}

    def purge_cache(self) -> None:
        """Forget every verified token: the next request of each is verified in full."""
        self._cache.purge()

    async def refresh_keys(self) -> dict[str, bool]:
        """Fetch every issuer's keys now; by issuer name, whether the fetch succeeded."""
        issuers = list(self._by_name.values())
        results = await asyncio.gather(*(i.keys.refresh() for i in issuers))
        return {i.name: ok for i, ok in zip(issuers, results)}

    def key_status(self) -> list[KeyStatus]:
        return [i.keys.status() for i in self._by_name.values()]
