"""Verifying the tokens relay issued itself, for the authenticator.

They are EdDSA JWTs signed with relay's identity key, ``iss`` and ``aud`` relay's issuer
identifier. The identity they prove is the subject's, as relay saw it at the exchange
(its issuer's name in ``idp``, its groups), limited to the flows in ``scope``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NoReturn

from relay.errors import Unauthorized
from relay.identity.claims import Identity
from relay.identity.jose import Compact
from relay.identity.jwk import VerifyKey, parse_jwks
from relay.identity.signing import IdentitySigner

__all__ = ["FLOW_SCOPE", "OwnTokens", "flows_of_scope"]

#: a scope value naming a flow: "flow:NAME"
FLOW_SCOPE = "flow:"


def _fail(reason: str, detail: str) -> NoReturn:
    raise Unauthorized(detail, reason=reason)


def flows_of_scope(scope: str) -> tuple[str, ...]:
    """The flow names a space-separated scope lists, in order, without repeats."""
    return tuple(dict.fromkeys(v[len(FLOW_SCOPE):] for v in scope.split() if v.startswith(FLOW_SCOPE)))


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    _fail("malformed", "relay token claim is not an array of strings")


def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        _fail("malformed", f"relay token has no '{name}'")
    return value


class OwnTokens:
    """Checks tokens whose ``iss`` is relay's issuer identifier."""

    __slots__ = ("issuer", "_keys")

    def __init__(self, issuer: str, signer: IdentitySigner) -> None:
        self.issuer = issuer
        self._keys: dict[str, VerifyKey] = parse_jwks(signer.jwks(), "relay's identity key")

    def verify(self, token: Compact, now: float) -> tuple[Identity, float]:
        """The identity ``token`` proves and until when it may be cached. Raises Unauthorized."""
        if token.header.get("alg") != "EdDSA":
            _fail("algorithm", "relay signs its tokens with EdDSA")
        kid = token.header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            _fail("unknown_kid", f"relay has no key {str(kid)[:64]!r}")
        if not key.verifiers["EdDSA"](token.signing_input, token.signature):
            _fail("bad_signature", "signature does not verify with relay's key")
        claims = token.payload
        exp = claims.get("exp")
        if type(exp) is not int:
            _fail("malformed", "'exp' is missing or not an integer")
        if now > exp:
            _fail("expired", "token has expired")
        if claims.get("aud") != self.issuer:
            _fail("audience", "token is not for relay")
        scope = _text(claims, "scope")
        identity = Identity(
            subject=_text(claims, "sub"), issuer=_text(claims, "idp"), groups=_strings(claims.get("groups", [])),
            scopes=tuple(scope.split()), claims=MappingProxyType(claims), jti=_text(claims, "jti"), kid=key.kid,
            expires_at=exp, flows=frozenset(flows_of_scope(scope)),
        )  # fmt: skip
        return identity, float(exp)
