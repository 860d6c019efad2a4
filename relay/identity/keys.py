"""The verification keys of one issuer, kept fresh by one asyncio task.

Rotation rules (the design's "Identity" section):

- a refresh runs every ``refresh`` seconds, and early when a token names an unknown
  kid, but at most once per ``cooldown`` so unknown kids cannot make relay hammer the
  identity provider; requests never wait for a fetch;
- a failed fetch or an unusable document keeps the last good keys, logs and counts it;
- a refresh that drops a kid, or changes the key behind one, calls ``on_removed`` at
  once, so the caller can stop honouring tokens (cached ones included) signed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypedDict

from relay.config import IssuerConfig
from relay.identity.fetch import FetchError, read_jwks
from relay.identity.jwk import VerifyKey, parse_jwks

__all__ = ["FETCH_TIMEOUT", "REFETCH_COOLDOWN", "IssuerKeys", "KeyStatus", "key_source"]

log = logging.getLogger(__name__)

REFETCH_COOLDOWN = 30.0  # seconds between fetches an unknown kid may trigger
FETCH_TIMEOUT = 10.0  # seconds for one whole fetch (discovery included)
_MIN_RETRY = 1.0  # seconds between attempts while an issuer has no keys at all


class KeyStatus(TypedDict):
    """One issuer's keys as the admin ``keys`` command shows them."""

    issuer: str
    source: str
    kids: list[str]
    fetches: int
    failures: int
    last_error: str | None
    last_success: float | None  # wall-clock time of the last good fetch


def key_source(config: IssuerConfig) -> tuple[str | None, ...]:
    """What determines an issuer's keys: equal values mean the keys can be kept on reload."""
    return (config.jwks_file, config.jwks_url, config.discovery_url, config.issuer)


class IssuerKeys:
    """The current keys of one issuer. ``get`` is synchronous and never blocks."""

    def __init__(self, config: IssuerConfig, on_removed: Callable[[], None],
                 *, cooldown: float = REFETCH_COOLDOWN, timeout: float = FETCH_TIMEOUT) -> None:  # fmt: skip
        self.config = config
        self._on_removed = on_removed
        self._cooldown = cooldown
        self._timeout = timeout
        self._keys: dict[str, VerifyKey] = {}
        self._lock = asyncio.Lock()  # one fetch at a time per issuer
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_attempt: float | None = None  # monotonic
        self._fetches = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_success: float | None = None

    @property
    def source(self) -> str:
        c = self.config
        return c.jwks_file or c.jwks_url or c.discovery_url or "?"

    def get(self, kid: str) -> VerifyKey | None:
        return self._keys.get(kid)

    def request_refetch(self) -> bool:
        """Ask for an early fetch (a token named an unknown kid); True if one was scheduled.

        Nothing happens while a fetch is pending or within ``cooldown`` of the last one.
        """
        if self._task is None or self._wake.is_set():
            return False
        last = self._last_attempt
        if last is not None and time.monotonic() - last < self._cooldown:
            return False
        self._wake.set()
        return True

    async def refresh(self) -> bool:
        """Fetch now and install the keys; False (last keys kept) when that failed."""
        async with self._lock:
            self._last_attempt = time.monotonic()
            self._fetches += 1
            loop = asyncio.get_running_loop()
            try:
                document = await loop.run_in_executor(None, read_jwks, self.config, self._timeout)
                keys = parse_jwks(document, self.source)
            except (FetchError, ValueError) as e:
                self._fetch_failed(str(e))
                return False
            self._install(keys)
            return True

    def run(self) -> None:
        """Start the refresh task on the running loop (first fetch at once if none was made)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"keys:{self.config.name}")

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the refresh task; returns it (to await its end) if there was one."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    def adopt(self, config: IssuerConfig) -> None:
        """Take a reloaded config with the same key source; keys stay, the next wait uses its refresh."""
        self.config = config

    def status(self) -> KeyStatus:
        return KeyStatus(
            issuer=self.config.name,
            source=self.source,
            kids=sorted(self._keys),
            fetches=self._fetches,
            failures=self._failures,
            last_error=self._last_error,
            last_success=self._last_success,
        )

    async def _run(self) -> None:
        while True:
            if self._last_attempt is not None:
                # without keys every token fails: retry sooner than the normal refresh,
                # but never in a tight loop
                retry = max(self._cooldown, _MIN_RETRY)
                delay = self.config.refresh if self._keys else min(retry, self.config.refresh)
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
                # arrives as the event fires, and close() would then wait forever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            try:
                await self.refresh()
            except Exception:  # a bug here must not end key refreshing for good
                log.exception("issuer %s: key refresh failed unexpectedly", self.config.name)
            self._wake.clear()

    def _install(self, keys: dict[str, VerifyKey]) -> None:
        old = self._keys
        removed = sorted(
            kid for kid, key in old.items() if kid not in keys or keys[kid].fingerprint != key.fingerprint
        )
        added = sorted(kid for kid in keys if kid not in old)
        self._keys = keys
        self._last_success = time.time()
        self._last_error = None
        if added:
            log.info("issuer %s: new keys %s", self.config.name, ", ".join(added))
        if removed:
            log.warning("issuer %s: keys removed or replaced: %s", self.config.name, ", ".join(removed))
            self._on_removed()

    def _fetch_failed(self, why: str) -> None:
        self._failures += 1
        self._last_error = why
        if self._keys:
            log.warning("issuer %s: key fetch failed, keeping %d keys: %s", self.config.name, len(self._keys), why)
        else:
            log.error("issuer %s: key fetch failed and no keys are loaded: %s", self.config.name, why)
