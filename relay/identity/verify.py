"""Verifying one token for one issuer, the slow path behind the verified-token cache.

The order of checks is fixed and each failure has its audit reason: the algorithm is
pinned by the issuer config, never taken on trust from the token (``algorithm``); the
key is found by kid (``unknown_kid``, which also asks for an early key refetch) and must
itself allow that algorithm (``algorithm``); the signature is checked with the key's
own ``cryptography`` object (``bad_signature``); only then are claims read: ``exp``
required and an integer (``expired``), ``nbf`` and ``iat`` not in the future beyond the
leeway (``not_yet_valid``), ``aud`` (or the claim the issuer's mapping names instead)
any of the issuer's audiences (``audience``).
PyJWT's ``jwt.decode`` is not used per request: it re-parses the header in Python and
coerces a string ``exp`` with ``int()``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from relay.config import IssuerConfig
from relay.errors import Unauthorized
from relay.identity.claims import ClaimPath, ClaimsMapper, Identity
from relay.identity.jose import Compact
from relay.identity.keys import IssuerKeys

__all__ = ["Issuer"]


def _fail(reason: str, detail: str) -> NoReturn:
    raise Unauthorized(detail, reason=reason)


def _numeric_date(payload: dict[str, Any], name: str) -> float | None:
    """An optional NumericDate claim (RFC 7519 §2); booleans and strings are refused."""
    value = payload.get(name)
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        return value
    _fail("malformed", f"'{name}' is not a number")


class Issuer:
    """One configured issuer as the verifier uses it: pinned algorithms, audiences, keys."""

    __slots__ = ("config", "name", "keys", "_algorithms", "_audiences", "_audience_claim", "_leeway", "_mapper")

    def __init__(self, config: IssuerConfig, keys: IssuerKeys) -> None:
        self.config = config
        self.name = config.name
        self.keys = keys
        self._algorithms = frozenset(config.algorithms)
        self._audiences = frozenset(config.audiences)
        self._audience_claim = ClaimPath(config.claims.audience)
        self._leeway = config.leeway
        self._mapper = ClaimsMapper(config.claims)

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
        exp = payload.get("exp")
        if type(exp) is not int:  # not bool, float or a numeric string: integers only
            _fail("malformed", "'exp' is missing or not an integer")
        leeway = self._leeway
        if now > exp + leeway:
            _fail("expired", "token has expired")
        for name in ("nbf", "iat"):
            moment = _numeric_date(payload, name)
            if moment is not None and moment > now + leeway:
                _fail("not_yet_valid", f"token '{name}' is in the future")
        self._check_audience(self._audience_claim.find(payload))
        return self._mapper.identity(payload, self.name, kid, exp), exp + leeway

    def _check_audience(self, aud: Any) -> None:
        if isinstance(aud, str):
            if aud in self._audiences:
                return
        elif isinstance(aud, list):
            if any(isinstance(a, str) and a in self._audiences for a in aud):
                return
        _fail("audience", f"token is not for this audience ({', '.join(sorted(self._audiences))})")
