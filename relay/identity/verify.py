"""Verifying one token for one issuer, the slow path behind the verified-token cache.

The order of checks is fixed and each failure has its audit reason: the algorithm is
pinned by the issuer config, never taken on trust from the token (``algorithm``); the
key is found by kid (``unknown_kid``, which also asks for an early key refetch) and must
itself allow that algorithm (``algorithm``); the signature is checked with the key's
own ``cryptography`` object (``bad_signature``); only then are claims read, by the
issuer's ``ClaimRules`` (a fast-path job, spec in ``relay/_fastpath_py_claims.py``):
``exp`` required and an integer (``expired``), ``nbf`` and ``iat`` not in the future
beyond the leeway (``not_yet_valid``), ``aud`` (or the claim the issuer's mapping names
instead) any of the issuer's audiences (``audience``), and the subject, groups and
scopes where the mapping says (``malformed``).
PyJWT's ``jwt.decode`` is not used per request: it re-parses the header in Python and
coerces a string ``exp`` with ``int()``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import NoReturn

from relay.config import IssuerConfig
from relay.errors import Unauthorized
from relay.fastpath import ClaimRules
from relay.identity.claims import Identity
from relay.identity.jose import Compact
from relay.identity.keys import IssuerKeys

__all__ = ["Issuer"]


def _fail(reason: str, detail: str) -> NoReturn:
    raise Unauthorized(detail, reason=reason)


class Issuer:
    """One configured issuer as the verifier uses it: pinned algorithms, audiences, keys."""

    __slots__ = ("config", "name", "keys", "_algorithms", "_leeway", "_claims")

    def __init__(self, config: IssuerConfig, keys: IssuerKeys) -> None:
        self.config = config
        self.name = config.name
        self.keys = keys
        self._algorithms = frozenset(config.algorithms)
        self._leeway = config.leeway
        mapping = config.claims
        self._claims = ClaimRules(config.audiences, config.leeway, audience=mapping.audience,
                                  subject=mapping.subject, groups=mapping.groups, scopes=mapping.scopes)

    def verify(self, token: Compact, now: float) -> tuple[Identity, float]:
        """The identity ``token`` proves and the time until which it may be cached.

        ``token``'s ``iss`` must already have selected this issuer. Raises Unauthorized.
        """
        alg: str = token.header["alg"]
        if alg not in self._algorithms:
            _fail("algorithm", f"algorithm {alg[:16]!r} is not allowed for issuer {self.name}")
        kid = token.header.get("kid")
        if kid is None:
            _fail("malformed", "token header has no 'kid'")
        key = self.keys.get(kid)
        if key is None:
            self.keys.request_refetch()
            _fail("unknown_kid", f"issuer {self.name} has no key {kid[:64]!r}")
        verifier = key.verifiers.get(alg)
        if verifier is None:
            _fail("algorithm", f"key {kid!r} of issuer {self.name} does not sign with {alg}")
        if not verifier(token.signing_input, token.signature):
            _fail("bad_signature", f"signature does not verify with key {kid!r} of issuer {self.name}")
        payload = token.payload
        subject, groups, scopes, jti, exp = self._claims.check(payload, now)
        identity = Identity(subject, self.name, groups, scopes, MappingProxyType(payload), jti, kid, exp)
        return identity, exp + self._leeway
