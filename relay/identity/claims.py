"""Who a verified token speaks for: the :class:`Identity`.

Each issuer config says where its subject, groups and scopes are (Okta ``scp``, Cognito
``cognito:groups``, Azure ``roles``, Keycloak ``realm_access.roles``); reading them is on
the path of every token nobody has seen, so it is a fast-path job: ``ClaimPath`` (one
claim name or dotted path) and ``ClaimRules`` (an issuer's checks and mapping) come from
``relay.fastpath``, whose pure-Python twin ``relay/_fastpath_py_claims.py`` is the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.fastpath import ClaimPath

__all__ = ["ClaimPath", "Identity"]


class Identity:
    """A verified caller, shared by every request with its token: treat it as read-only
    (only relay.identity.headers fills ``header_memo``, once, and relay.identity.authz
    ``verdicts``).

    ``issuer`` is the issuer's configured *name*; ``claims`` is the whole verified
    payload (read-only); ``expires_at`` is the token's ``exp`` (seconds since the epoch).
    """

    __slots__ = ("subject", "issuer", "groups", "scopes", "claims", "jti", "kid", "expires_at", "flows",
                 "grants", "header_memo", "verdicts")

    def __init__(self, subject: str, issuer: str, groups: tuple[str, ...], scopes: tuple[str, ...],
                 claims: Mapping[str, Any], jti: str | None, kid: str, expires_at: int,
                 flows: frozenset[str] | None = None, grants: tuple[str, ...] | None = None) -> None:  # fmt: skip
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
        #: the just-in-time grants a token relay issued rests on, admitted only while they last;
        #: None (not empty) when there are none, the cheapest test on every request
        self.grants = grants
        #: the plain identity header block, built once by relay.identity.headers
        self.header_memo: bytes | None = None
        #: each flow authorizer's verdict on this identity: None (allowed) or why not
        self.verdicts: dict[object, str | None] = {}

    def __repr__(self) -> str:
        return f"Identity(subject={self.subject!r}, issuer={self.issuer!r}, groups={self.groups!r})"
