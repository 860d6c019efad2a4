"""relay's own signatures: ``X-Relay-Identity`` tokens and the tokens it issues.

Downstream services verify them with the JWKS from ``IdentitySigner.jwks()`` (served at
``/.well-known/relay-jwks.json``). The keys are a :class:`~relay.identity.key_ring.KeyRing`
that rotates (:mod:`relay.identity.key_keeper`); each signature is made with the key
that signs at that instant and names it in its ``kid``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from relay.identity.claims import Identity
from relay.identity.jose import b64url_encode
from relay.identity.jwk import VerifyKey
from relay.identity.key_ring import KeyRing

__all__ = ["LIFETIME", "IdentitySigner"]

LIFETIME = 60  # seconds an X-Relay-Identity token is valid
#: a signed token is reused for this long, so it always has LIFETIME - REUSE seconds left;
#: signing costs ~35 µs, more than the rest of a request, and the window caps that at
#: one signature per (identity, flow) per 30 s
REUSE = 30
_MEMO_CAPACITY = 4096


class IdentitySigner:
    """Signs JWTs with relay's signing key of the moment. ``reread`` looks at the key set
    again (a key relay does not know may have been added by the process that rotates);
    True when the set changed."""

    __slots__ = ("issuer", "ring", "_reread", "_headers", "_memo")

    def __init__(self, ring: KeyRing, reread: Callable[[], bool] | None = None, issuer: str = "relay") -> None:
        self.issuer = issuer
        self.ring = ring
        self._reread = reread
        self._headers: dict[str, bytes] = {}
        self._memo: dict[tuple[Identity, str], tuple[int, str, bytes]] = {}

    @property
    def kid(self) -> str:
        """The kid of the key that signs now."""
        return self.ring.signing(time.time()).times.kid

    def sign(self, claims: dict[str, object], now: float | None = None) -> bytes:
        """A compact EdDSA JWS of ``claims`` (serialized with orjson), signed with the
        key that signs at ``now`` (default: the present)."""
        key = self.ring.signing(time.time() if now is None else now)
        signing_input = self._header(key.times.kid) + b"." + b64url_encode(orjson.dumps(claims))
        return signing_input + b"." + b64url_encode(key.private_key.sign(signing_input))

    def _header(self, kid: str) -> bytes:
        header = self._headers.get(kid)
        if header is None:
            if len(self._headers) > 8:
                self._headers.clear()  # keys that rotated out
            header = self._headers[kid] = b64url_encode(orjson.dumps({"alg": "EdDSA", "kid": kid, "typ": "JWT"}))
        return header

    def identity_token(self, identity: Identity, flow: str, now: float) -> bytes:
        """The X-Relay-Identity JWT: ``identity`` verified by relay for ``flow`` (its ``aud``).

        Claims: iss (relay), sub, aud (flow name), idp (issuer name), groups, scope
        (space-separated), iat and exp = iat + LIFETIME, where iat is ``now`` rounded
        down to REUSE seconds so the same token serves the whole window — unless the
        signing key changed within it.
        """
        start = int(now) - int(now) % REUSE
        kid = self.ring.signing(now).times.kid
        key = (identity, flow)
        memo = self._memo.get(key)
        if memo is not None and memo[0] == start and memo[1] == kid:
            return memo[2]
        token = self.sign({
            "iss": self.issuer, "sub": identity.subject, "aud": flow, "idp": identity.issuer,
            "groups": identity.groups, "scope": " ".join(identity.scopes),
            "iat": start, "exp": start + LIFETIME,
        }, now)  # fmt: skip
        if len(self._memo) >= _MEMO_CAPACITY:
            self._memo.clear()  # O(1) amortized; a cleared entry costs one signature
        self._memo[key] = (start, kid, token)
        return token

    def jwks(self, now: float | None = None) -> bytes:
        """The JWK Set of relay's published keys, as served to downstream verifiers."""
        return self.ring.jwks(time.time() if now is None else now)

    def verifier(self, kid: str) -> VerifyKey | None:
        """The public key of relay's key ``kid``; the key set is looked at again first
        when ``kid`` is not one relay holds."""
        key = self.ring.verifier(kid)
        if key is None and self._reread is not None and self._reread():
            key = self.ring.verifier(kid)
        return key
