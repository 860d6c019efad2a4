"""What can be done with grants, and by whom; the HTTP endpoint and the admin socket both call it.

- Anyone with an issuer's token may ask for a grant for a flow with ``approval``, for
  at most its ``max_ttl`` (a longer ttl is refused, not cut: the requester should know
  what they will get), unless its rules let them in already or its deny rule matches.
- A flow's approvers (``approval.approvers``) may approve or deny a pending grant of
  it, never one they asked for themselves (four eyes). The operator (relayctl) may too.
- The requester, an approver and the operator may revoke a pending or approved grant.
- A requester sees their own grants; an approver those of the flows they approve.

Each change goes through the process's :class:`GrantStore`; only a change that won is
audited as done, every refusal is audited with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.audit import AuditLog
from relay.config import TokensConfig
from relay.errors import Forbidden, ServiceUnavailable
from relay.grants.model import Grant, GrantBook, Party, new_grant
from relay.grants.records import Action, grant_record
from relay.grants.store import GrantStore
from relay.identity.claims import Identity
from relay.units import parse_duration

if TYPE_CHECKING:
    from relay.policy import Flow

__all__ = ["Caller", "GrantRefused", "GrantService", "MAX_PENDING", "OPERATOR_ISSUER"]

log = logging.getLogger(__name__)

#: pending requests one requester may have at once
MAX_PENDING = 5
MAX_REASON = 500
#: the ``iss`` of the operator acting through relayctl
OPERATOR_ISSUER = "relayctl"


class GrantRefused(Exception):
    """A grant request or decision refused: ``status`` and ``code`` for the caller, ``reason`` for the audit."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True, slots=True)
class Caller:
    """Who acts: an issuer's token (``identity``), or the operator (``identity`` None)."""

    party: Party
    identity: Identity | None

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        return cls(Party(identity.subject, identity.issuer), identity)


class GrantService:
    """The grants of one process, for as long as it runs (a reload only :meth:`configure` s it)."""

    def __init__(self, book: GrantBook, store: GrantStore, audit: AuditLog) -> None:
        self.book = book
        self.store = store
        self.audit = audit
        self.pending_ttl = TokensConfig(issuer="").grant_request_ttl
        self.subject_issuers: tuple[str, ...] = ()

    def configure(self, config: TokensConfig) -> None:
        self.pending_ttl = config.grant_request_ttl
        self.subject_issuers = config.subject_issuers

    # --- reading -------------------------------------------------------------------------

    def may_decide(self, caller: Caller, flow: Flow | None) -> bool:
        if caller.identity is None:
            return True
        return flow is not None and flow.authorizer is not None and flow.authorizer.approves(caller.identity)

    def visible(self, caller: Caller, grant: Grant, flows: Mapping[str, Flow]) -> bool:
        return grant.requester == caller.party or self.may_decide(caller, flows.get(grant.flow))

    def show(self, caller: Caller, grant_id: str, flows: Mapping[str, Flow]) -> Grant:
        grant = self.book.get(grant_id)
        if grant is None or not self.visible(caller, grant, flows):
            raise GrantRefused(404, "no_grant", f"there is no grant {grant_id[:64]!r} you may see")
        return grant

    def listing(self, caller: Caller, flows: Mapping[str, Flow]) -> list[Grant]:
        return [g for g in self.book.grants(time.time()) if self.visible(caller, g, flows)]

    # --- changing ------------------------------------------------------------------------

    async def request(self, caller: Caller, form: Mapping[str, object], flows: Mapping[str, Flow],
                      request_id: str) -> Grant:  # fmt: skip
        flow_name = form.get("flow")
        try:
            grant = self._new(caller, form, flows)
        except GrantRefused as refused:
            name = flow_name if isinstance(flow_name, str) else None
            self._audit(request_id, "request", refused.code, caller, None, name)
            raise
        await self._propose(grant, "request", caller, request_id)
        log.info("grant %s asked by %s for flow %s", grant.id, caller.party.sub, grant.flow)
        return grant

    async def act(self, caller: Caller, grant_id: str, action: Literal["approve", "deny", "revoke"],
                  flows: Mapping[str, Flow], request_id: str | None) -> Grant:  # fmt: skip
        grant = self.book.get(grant_id)
        try:
            changed = self._changed(caller, grant, grant_id, action, flows, time.time())
        except GrantRefused as refused:
            self._audit(request_id, action, refused.code, caller, grant)
            raise
        await self._propose(changed, action, caller, request_id)
        log.warning("grant %s for %s on flow %s: %s by %s", grant_id, changed.requester.sub, changed.flow,
                    changed.state, caller.party.sub)
        return changed

    async def expire_due(self) -> None:
        """Mark every grant past its end expired (once, whichever process wins)."""
        now = time.time()
        for grant in [g for g in self.book.grants(now) if g.due(now)]:
            if await self.store.propose(grant.ended("expired", None, now)):
                self.audit.record(grant_record(None, "expire", "done", None, self.book.get(grant.id) or grant))

    def _new(self, caller: Caller, form: Mapping[str, object], flows: Mapping[str, Flow]) -> Grant:
        identity = caller.identity
        assert identity is not None
        name, reason = form.get("flow"), form.get("reason")
        if not isinstance(name, str) or not name:
            raise GrantRefused(400, "invalid_request", "flow is missing: name the flow the grant is for")
        flow = flows.get(name)
        if flow is None or flow.config.approval is None or flow.authorizer is None:
            raise GrantRefused(400, "not_grantable", f"there is no flow {name} that grants can be asked for")
        if not isinstance(reason, str) or not reason.strip():
            raise GrantRefused(400, "invalid_request", "reason is missing: say why the access is needed")
        if len(reason) > MAX_REASON:
            raise GrantRefused(400, "invalid_request", f"reason is longer than {MAX_REASON} characters")
        max_ttl = flow.config.approval.max_ttl
        ttl = _ttl(form.get("ttl"), max_ttl)
        if (flow.issuers and identity.issuer not in flow.issuers) or (
                self.subject_issuers and identity.issuer not in self.subject_issuers):
            raise GrantRefused(403, "issuer_not_accepted",
                               f"flow {name} does not take tokens of issuer {identity.issuer} by exchange")
        if flow.authorizer.denies(identity):
            raise GrantRefused(403, "denied_by_policy", f"flow {name}: its deny rule matches you")
        if _allowed(flow, identity):
            raise GrantRefused(409, "already_allowed", f"flow {name} lets you in already: exchange your token")
        now = time.time()
        pending = [g for g in self.book.grants(now) if g.requester == caller.party and g.state == "pending"
                   and not g.due(now)]  # fmt: skip
        if len(pending) >= MAX_PENDING:
            raise GrantRefused(409, "too_many_pending", f"you have {len(pending)} grant requests pending already")
        return new_grant(name, caller.party, reason.strip(), ttl, self.pending_ttl, now)

    def _changed(self, caller: Caller, grant: Grant | None, grant_id: str, action: str,
                 flows: Mapping[str, Flow], now: float) -> Grant:  # fmt: skip
        if grant is None:
            raise GrantRefused(404, "no_grant", f"there is no grant {grant_id[:64]!r} you may see")
        deciding = self.may_decide(caller, flows.get(grant.flow))
        if action == "revoke":
            if not (deciding or grant.requester == caller.party):
                raise GrantRefused(403, "not_an_approver", f"only its requester or an approver of flow "
                                                           f"{grant.flow} may revoke grant {grant.id}")
            if not (grant.state == "pending" and not grant.due(now)) and not grant.live(now):
                raise GrantRefused(409, "grant_not_active", f"grant {grant.id} is {_state(grant, now)}")
            return grant.ended("revoked", caller.party, now)
        if grant.requester == caller.party:
            raise GrantRefused(403, "self_approval", "a grant must be decided by someone other than its requester")
        if not deciding:
            raise GrantRefused(403, "not_an_approver", f"you are not an approver of flow {grant.flow}")
        if grant.state != "pending" or grant.due(now):
            raise GrantRefused(409, "grant_not_pending", f"grant {grant.id} is {_state(grant, now)}")
        return grant.decided("approved" if action == "approve" else "denied", caller.party, now)

    async def _propose(self, grant: Grant, action: Action, caller: Caller, request_id: str | None) -> None:
        try:
            won = await self.store.propose(grant)
        except ServiceUnavailable as exc:
            self._audit(request_id, action, "unavailable", caller, grant)
            raise GrantRefused(503, "grants_unavailable", str(exc)) from None
        if not won:
            held = self.book.get(grant.id)
            self._audit(request_id, action, "conflict", caller, held or grant)
            raise GrantRefused(409, "grant_not_pending", f"grant {grant.id} was changed meanwhile"
                                                         f"{f' (it is {held.state})' if held else ''}")
        self._audit(request_id, action, "done", caller, grant)

    def _audit(self, request_id: str | None, action: Action, reason: str, caller: Caller, grant: Grant | None,
               flow: str | None = None) -> None:  # fmt: skip
        self.audit.record(grant_record(request_id, action, reason, caller.party, grant, flow, caller.party))


def _state(grant: Grant, now: float) -> str:
    return "expired" if grant.due(now) else grant.state


def _allowed(flow: Flow, identity: Identity) -> bool:
    assert flow.authorizer is not None
    try:
        flow.authorizer.check(identity)
    except Forbidden:
        return False
    return True


def _ttl(value: object, max_ttl: float) -> float:
    """The ttl asked (a duration, or whole seconds), at most ``max_ttl``; the max when none is asked."""
    if value is None:
        return max_ttl
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            ttl = float(value)
        elif isinstance(value, str):
            ttl = float(value) if value.isdigit() else parse_duration(value)
        else:
            raise ValueError("ttl must be a duration such as \"30m\" or a number of seconds")
    except ValueError as exc:
        raise GrantRefused(400, "invalid_request", str(exc)) from None
    if ttl < 1:
        raise GrantRefused(400, "invalid_request", "ttl must be at least 1s")
    if ttl > max_ttl:
        raise GrantRefused(400, "ttl_too_long", f"ttl of {value} is over the flow's approval.max_ttl "
                                                f"({max_ttl:g}s): ask for less")
    return ttl
