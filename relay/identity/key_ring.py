"""The signing keys one process holds, and what each does at a given instant.

Which key signs and which are published is read from the keys' times alone
(:mod:`relay.identity.key_schedule`), at the moment of each signature: a process signs
with the new key from its activation instant on, whether or not anything woke it up
then, and every process reading the same key set agrees. The set itself is replaced
whole (:meth:`KeyRing.replace`) when the key set file changes.
"""

from __future__ import annotations

import math

import orjson

from relay.identity.ed25519_key import public_jwk
from relay.identity.jwk import VerifyKey, parse_jwk
from relay.identity.key_schedule import KeyState, KeyTimes, published, signing_key, state
from relay.identity.key_set_file import StoredKey

__all__ = ["KeyRing"]


class KeyRing:
    """relay's own keys: the one that signs now, the ones its JWKS lists, and a verifier
    for each (relay accepts its own tokens back)."""

    __slots__ = ("_keys", "_verifiers", "_jwks", "_signing", "_signing_from", "_signing_until", "version")

    def __init__(self, keys: tuple[StoredKey, ...]) -> None:
        self.version = 0
        self.replace(keys)

    @property
    def keys(self) -> tuple[StoredKey, ...]:
        return self._keys

    def replace(self, keys: tuple[StoredKey, ...]) -> None:
        """Hold ``keys`` from now on (a key set never empty)."""
        if not keys:
            raise ValueError("a key set needs at least one key")
        self._keys = keys
        jwks = {k.times.kid: public_jwk(k.private_key) for k in keys}
        self._verifiers = {kid: parse_jwk(jwk) for kid, jwk in jwks.items()}
        self._jwks: tuple[tuple[str, ...], bytes] = ((), b"")
        self._signing: StoredKey | None = None
        self._signing_from = self._signing_until = math.inf
        self.version += 1

    def times(self) -> tuple[KeyTimes, ...]:
        return tuple(k.times for k in self._keys)

    def signing(self, now: float) -> StoredKey:
        """The key that signs at ``now``; before any key activates (a hand-made set),
        the earliest to activate."""
        if self._signing_from <= now < self._signing_until and self._signing is not None:
            return self._signing
        times = self.times()
        chosen = signing_key(times, now)
        kid = chosen.kid if chosen is not None else min(times, key=lambda t: t.activates).kid
        key = next(k for k in self._keys if k.times.kid == kid)
        # the choice holds from the last activation or retirement to the next
        changes = [t for k in times for t in (k.activates, k.retires) if t is not None]
        self._signing = key
        self._signing_from = max((t for t in changes if t <= now), default=-math.inf)
        self._signing_until = min((t for t in changes if t > now), default=math.inf)
        return key

    def jwks(self, now: float) -> bytes:
        """The JWK Set relay publishes at ``now``: every key not yet past its removal."""
        kids = tuple(t.kid for t in published(self.times(), now))
        if self._jwks[0] != kids:
            keys = [public_jwk(k.private_key) for k in self._keys if k.times.kid in kids]
            self._jwks = (kids, orjson.dumps({"keys": keys}))
        return self._jwks[1]

    def verifier(self, kid: str) -> VerifyKey | None:
        """The public key ``kid`` names, if it is one of the set's."""
        return self._verifiers.get(kid)

    def states(self, now: float) -> dict[str, KeyState]:
        return {k.times.kid: state(k.times, now) for k in self._keys}
