"""Who a verified token speaks for: the :class:`Identity` and the issuer's claim mapping.

Issuers put the same facts under different names (Okta ``scp``, Cognito
``cognito:groups``, Azure ``roles``, Keycloak ``realm_access.roles``), so each issuer
config says where its subject, groups and scopes are. A path is tried first as one
claim name (Auth0 namespaces claims with URLs full of dots), then as dotted steps into
nested objects. Groups and scopes may be a string or an array of strings; a scope
string is split on spaces (RFC 6749 §3.3), a group string is one group.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from relay.config import ClaimsMapping
from relay.errors import Unauthorized

__all__ = ["ClaimPath", "ClaimsMapper", "Identity"]


class Identity:
    """A verified caller, shared by every request with its token: treat it as read-only
    (only relay.identity.headers fills ``header_memo``, once, and relay.identity.authz
    ``verdicts``).

    ``issuer`` is the issuer's configured *name*; ``claims`` is the whole verified
    payload (read-only); ``expires_at`` is the token's ``exp`` (seconds since the epoch).
    """

    __slots__ = ("subject", "issuer", "groups", "scopes", "claims", "jti", "kid", "expires_at", "flows",
                 "header_memo", "verdicts")

    def __init__(self, subject: str, issuer: str, groups: tuple[str, ...], scopes: tuple[str, ...],
                 claims: Mapping[str, Any], jti: str | None, kid: str, expires_at: int,
                 flows: frozenset[str] | None = None) -> None:  # fmt: skip
        self.subject = subject
        self.issuer = issuer
        self.groups = groups
        self.scopes = scopes
        self.claims = claims
        self.jti = jti
        self.kid = kid
        self.expires_at = expires_at
        #: a token relay issued itself names the flows it is good for; None: any flow
        self.flows = flows
        #: the plain identity header block, built once by relay.identity.headers
        self.header_memo: bytes | None = None
        #: each flow authorizer's verdict on this identity: None (allowed) or why not
        self.verdicts: dict[object, str | None] = {}

    def __repr__(self) -> str:
        return f"Identity(subject={self.subject!r}, issuer={self.issuer!r}, groups={self.groups!r})"


class ClaimPath:
    """A claim name or dotted path, resolved against a payload."""

    __slots__ = ("name", "steps")

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = tuple(name.split("."))

    def find(self, claims: Mapping[str, Any]) -> Any:
        """The value at this path, or None when absent."""
        value = claims.get(self.name)
        if value is not None or len(self.steps) == 1:
            return value
        node = claims.get(self.steps[0])
        for step in self.steps[1:]:
            if not isinstance(node, dict):
                return None
            node = node.get(step)
        return node


def _strings(path: ClaimPath, claims: Mapping[str, Any], split: bool) -> tuple[str, ...]:
    value = path.find(claims)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split()) if split else (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    # refusing beats ignoring: a deny rule must not miss a group spelled as a number
    raise Unauthorized(f"claim '{path.name}' is not a string or an array of strings", reason="malformed")


class ClaimsMapper:
    """Builds an :class:`Identity` from verified claims, as one issuer's mapping says."""

    __slots__ = ("_subject", "_groups", "_scopes")

    def __init__(self, mapping: ClaimsMapping) -> None:
        self._subject = ClaimPath(mapping.subject)
        self._groups = ClaimPath(mapping.groups)
        self._scopes = ClaimPath(mapping.scopes)

    def identity(self, claims: dict[str, Any], issuer: str, kid: str, expires_at: int) -> Identity:
        """Raises Unauthorized(reason="malformed") when the subject is missing or a claim has the wrong type."""
        subject = self._subject.find(claims)
        if not isinstance(subject, str) or not subject:
            raise Unauthorized(f"token has no subject claim '{self._subject.name}'", reason="malformed")
        jti = claims.get("jti")
        return Identity(
            subject=subject,
            issuer=issuer,
            groups=_strings(self._groups, claims, split=False),
            scopes=_strings(self._scopes, claims, split=True),
            claims=MappingProxyType(claims),
            jti=jti if isinstance(jti, str) else None,
            kid=kid,
            expires_at=expires_at,
        )
