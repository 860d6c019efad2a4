"""What relay may issue for one token-exchange request (RFC 8693), decided without I/O.

The caller has verified the subject (and actor) tokens already; this checks the request
against the flows asked for. A token never grants more than the subject has now: each
flow must allow exchange (``max_token_ttl``), its issuers and rules must accept the
subject — or, for a flow with ``approval``, a live just-in-time grant of the subject's
for it, unless its deny rule matches — and the actor too when the flow sets
``actor_must_be_allowed``; a token relay issued itself can only be exchanged for flows
it already names, and keeps the grants it rests on. The lifetime is the smallest
``max_token_ttl`` of the flows, cut to the life left in the subject and actor tokens
and to the end of every grant used.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.errors import Forbidden
from relay.grants.model import GrantBook, Party
from relay.identity.claims import Identity
from relay.tokens.oauth import OAuthError
from relay.tokens.own import FLOW_SCOPE, flows_of_scope

if TYPE_CHECKING:
    from relay.policy import Flow

__all__ = ["ACCESS_TOKEN_TYPE", "EXCHANGE_GRANT", "JWT_TOKEN_TYPE", "Issued", "check_request", "decide"]

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
#: the token types relay reads as subject and actor tokens, and can issue
_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)


@dataclass(frozen=True, slots=True)
class Issued:
    claims: dict[str, object]
    flows: tuple[str, ...]
    scope: str
    jti: str
    exp: int
    token_type: str  # the issued_token_type
    expires_in: int
    grants: tuple[str, ...]  # the just-in-time grants it rests on


def check_request(form: Mapping[str, str]) -> None:
    """The parameters alone: the grant type, the token types, the tokens present."""
    grant = form.get("grant_type")
    if grant is None:
        raise OAuthError("invalid_request", "grant_type is missing")
    if grant != EXCHANGE_GRANT:
        raise OAuthError("unsupported_grant_type", f"relay issues tokens only by token exchange ({EXCHANGE_GRANT})")
    if "subject_token" not in form:
        raise OAuthError("invalid_request", "subject_token is missing")
    _check_type(form, "subject_token_type")
    if "actor_token" in form:
        _check_type(form, "actor_token_type")
    elif "actor_token_type" in form:
        raise OAuthError("invalid_request", "actor_token_type is given without actor_token")
    if "requested_token_type" in form:
        _check_type(form, "requested_token_type")
    for name in ("resource", "audience"):
        if name in form:
            # silently ignoring it would let a client believe the token is limited to it
            raise OAuthError("invalid_target", f"relay issues tokens for its flows only: use scope, not {name}")


def _check_type(form: Mapping[str, str], name: str) -> None:
    if form.get(name) not in _TOKEN_TYPES:
        raise OAuthError("invalid_request", f"{name} must be {' or '.join(_TOKEN_TYPES)}")


def decide(form: Mapping[str, str], subject: Identity, actor: Identity | None, flows: Mapping[str, Flow],
           issuer: str, grants: GrantBook, now: float) -> Issued:  # fmt: skip
    """The token to issue, or OAuthError(invalid_scope) saying which flow may not be had."""
    scope = form.get("scope", "")
    names = flows_of_scope(scope)
    if not names or len(names) != len(scope.split()):
        raise OAuthError("invalid_scope", f"scope must list the flows wanted as {FLOW_SCOPE}NAME", "bad_scope")
    used = dict.fromkeys(subject.grants or ())
    ends = [now + _lifetime(flows.get(name), name, subject, actor, grants, used, now) for name in names]
    ends += [grant.expires_at for grant_id in used if (grant := grants.get(grant_id)) and grant.expires_at]
    exp = int(min(*ends, subject.expires_at, actor.expires_at if actor else subject.expires_at))
    if exp <= int(now):
        raise OAuthError("invalid_request", "the subject or actor token has no life left", "token_expiring")
    granted = " ".join(FLOW_SCOPE + name for name in names)
    jti = secrets.token_urlsafe(16)
    claims: dict[str, object] = {
        "iss": issuer, "aud": issuer, "sub": subject.subject, "idp": subject.issuer, "groups": list(subject.groups),
        "scope": granted, "jti": jti, "iat": int(now), "exp": exp,
    }  # fmt: skip
    if used:
        claims["grants"] = list(used)
    earlier = subject.claims.get("act")
    if actor is not None:
        act: dict[str, object] = {"sub": actor.subject, "iss": str(actor.claims.get("iss"))}
        if isinstance(earlier, dict):
            act["act"] = earlier  # RFC 8693 §4.1: the chain of delegation, newest first
        claims["act"] = act
    elif isinstance(earlier, dict):
        claims["act"] = earlier  # re-exchanging a token must not shed who acted in it
    token_type = form.get("requested_token_type", ACCESS_TOKEN_TYPE)
    return Issued(claims, names, granted, jti, exp, token_type, max(exp - int(now), 0), tuple(used))


def _lifetime(flow: Flow | None, name: str, subject: Identity, actor: Identity | None, grants: GrantBook,
              used: dict[str, None], now: float) -> float:  # fmt: skip
    """The flow's max_token_ttl once the subject (and actor) may have it; a grant that
    lets the subject in is added to ``used``."""
    if flow is None or flow.authorizer is None:
        raise OAuthError("invalid_scope", f"there is no flow {name} that takes tokens", "unknown_flow")
    ttl = flow.config.max_token_ttl
    if ttl is None:
        raise OAuthError("invalid_scope", f"flow {name} does not allow token exchange", "flow_not_exchangeable")
    try:
        _admit(flow, subject, "subject_not_allowed")
    except OAuthError:
        grant = _grant_for(flow, subject, grants, now)
        if grant is None:
            raise
        used[grant] = None
    if actor is not None and flow.config.actor_must_be_allowed:
        _admit(flow, actor, "actor_not_allowed")
    return ttl


def _grant_for(flow: Flow, subject: Identity, grants: GrantBook, now: float) -> str | None:
    """The live grant letting ``subject`` (an issuer's token, not relay's) into ``flow``."""
    assert flow.authorizer is not None
    if flow.config.approval is None or subject.flows is not None or flow.authorizer.denies(subject):
        return None
    if flow.issuers and subject.issuer not in flow.issuers:
        return None
    grant = grants.live_for(Party(subject.subject, subject.issuer), flow.name, now)
    return grant.id if grant is not None else None


def _admit(flow: Flow, identity: Identity, reason: str) -> None:
    if flow.issuers and identity.issuer not in flow.issuers:
        raise OAuthError("invalid_scope", f"flow {flow.name} does not accept tokens of issuer {identity.issuer}",
                         reason)  # fmt: skip
    assert flow.authorizer is not None
    try:
        flow.authorizer.check(identity)
    except Forbidden as exc:
        raise OAuthError("invalid_scope", exc.detail, reason) from None
