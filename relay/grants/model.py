"""A just-in-time grant and the book of those a process holds.

A grant's state only moves forward, and each state has a *rank*: pending (1), then
approved or denied (2), then revoked or expired (3). A change is applied only over a
grant of lower rank, so two approvers deciding at once, or two processes noticing the
same expiry, agree on one outcome, and the writer whose change won is the one that
audits it. A grant is kept for a day after it ended (so its requester can still read
how it ended), then forgotten.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["Grant", "GrantBook", "GrantState", "Party", "RETAIN", "new_grant"]

GrantState = Literal["pending", "approved", "denied", "revoked", "expired"]
_STATES: tuple[GrantState, ...] = get_args(GrantState)
_RANK: dict[GrantState, int] = {"pending": 1, "approved": 2, "denied": 2, "revoked": 3, "expired": 3}
#: how long an ended grant is still shown
RETAIN = 86400.0


@dataclass(frozen=True, slots=True)
class Party:
    """Someone a grant names: a token's subject and its issuer's name (``relayctl`` for the operator)."""

    sub: str
    iss: str

    def as_json(self) -> dict[str, str]:
        return {"sub": self.sub, "iss": self.iss}


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    flow: str
    requester: Party
    reason: str
    ttl: float  # how long it lasts once approved
    state: GrantState
    requested_at: float
    pending_until: float  # a request not decided by then expires
    decided_by: Party | None = None  # who approved or denied it
    decided_at: float | None = None
    expires_at: float | None = None  # an approved grant ends then
    ended_by: Party | None = None  # who revoked it
    ended_at: float | None = None  # when it was revoked or expired

    @property
    def rank(self) -> int:
        return _RANK[self.state]

    @property
    def until(self) -> float:
        """When it may be forgotten."""
        if self.state == "pending":
            end = self.pending_until
        elif self.state == "approved":
            assert self.expires_at is not None
            end = self.expires_at
        else:
            end = self.ended_at or self.decided_at or self.requested_at
        return end + RETAIN

    def live(self, now: float) -> bool:
        """Approved and not yet ended: tokens exchanged under it are admitted."""
        return self.state == "approved" and self.expires_at is not None and now < self.expires_at

    def due(self, now: float) -> bool:
        """Past its end but not yet marked expired."""
        if self.state == "pending":
            return now >= self.pending_until
        return self.state == "approved" and self.expires_at is not None and now >= self.expires_at

    def decided(self, state: Literal["approved", "denied"], by: Party, now: float) -> Grant:
        expires = now + self.ttl if state == "approved" else None
        return dataclasses.replace(self, state=state, decided_by=by, decided_at=now, expires_at=expires)

    def ended(self, state: Literal["revoked", "expired"], by: Party | None, now: float) -> Grant:
        return dataclasses.replace(self, state=state, ended_by=by, ended_at=now)

    def as_json(self) -> dict[str, Any]:
        return {
            "grant_id": self.id, "flow": self.flow, "requester": self.requester.as_json(), "reason": self.reason,
            "ttl": self.ttl, "status": self.state, "requested_at": self.requested_at,
            "pending_until": self.pending_until,
            "decided_by": self.decided_by.as_json() if self.decided_by else None, "decided_at": self.decided_at,
            "expires_at": self.expires_at, "ended_by": self.ended_by.as_json() if self.ended_by else None,
            "ended_at": self.ended_at,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: object) -> Grant:
        """The grant ``as_json`` wrote. Raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("a grant is not an object")
        state = data.get("status")
        if state not in _STATES:
            raise ValueError(f"status must be one of {', '.join(_STATES)}")
        return cls(
            id=_text(data, "grant_id"), flow=_text(data, "flow"), requester=_party(data, "requester"),
            reason=_text(data, "reason", empty=True), ttl=_time(data, "ttl"), state=state,
            requested_at=_time(data, "requested_at"), pending_until=_time(data, "pending_until"),
            decided_by=_party(data, "decided_by", optional=True), decided_at=_time(data, "decided_at", True),
            expires_at=_time(data, "expires_at", True), ended_by=_party(data, "ended_by", optional=True),
            ended_at=_time(data, "ended_at", True),
        )  # fmt: skip


def new_grant(flow: str, requester: Party, reason: str, ttl: float, pending_ttl: float, now: float) -> Grant:
    return Grant(secrets.token_hex(12), flow, requester, reason, ttl, "pending", now, now + pending_ttl)


def _text(data: dict[str, Any], name: str, empty: bool = False) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not (value or empty):
        raise ValueError(f"'{name}' must be a non-empty string")
    return value


def _time(data: dict[str, Any], name: str, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{name}' must be a number of seconds")
    return float(value)


def _party(data: dict[str, Any], name: str, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"'{name}' must be an object of sub and iss")
    return Party(_text(value, "sub"), _text(value, "iss"))


class GrantBook:
    """The grants one process holds, by id."""

    __slots__ = ("_grants",)

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}

    def hold(self, grant: Grant) -> bool:
        """Keep ``grant`` unless one of equal or higher rank is held; whether it was kept."""
        held = self._grants.get(grant.id)
        if held is not None and held.rank >= grant.rank:
            return False
        self._grants[grant.id] = grant
        return True

    def get(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id)

    def grants(self, now: float) -> list[Grant]:
        """Every grant not yet forgotten, oldest request first."""
        for grant_id in [g.id for g in self._grants.values() if g.until <= now]:
            del self._grants[grant_id]
        return sorted(self._grants.values(), key=lambda g: g.requested_at)

    def live_for(self, requester: Party, flow: str, now: float) -> Grant | None:
        """The approved grant of ``requester`` for ``flow`` that lasts longest, if any."""
        live = [g for g in self._grants.values() if g.flow == flow and g.requester == requester and g.live(now)]
        return max(live, key=lambda g: g.expires_at or 0.0, default=None)

    def ended(self, grant_ids: tuple[str, ...], now: float) -> str | None:
        """The first of ``grant_ids`` that is not live (revoked, expired, unknown), if any."""
        for grant_id in grant_ids:
            grant = self._grants.get(grant_id)
            if grant is None or not grant.live(now):
                return grant_id
        return None
