"""The audit records of just-in-time grants: one per decision about a grant.

``event`` ``grant``, ``action`` (``request``, ``approve``, ``deny``, ``revoke``,
``expire``), ``decision`` (``allow``: the change was made; ``deny``: refused, ``reason``
says why), ``grant_id``, ``subject`` and ``issuer`` (the requester's), ``actor`` (who
acted: the requester, an approver, whoever revoked; ``null`` for an expiry),
``approver`` (who approved or denied it, once someone did), ``flows``, ``status`` (the
grant's state after), ``expires_at`` and, for a request, its ``reason`` (``detail``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from relay.grants.model import Grant, Party

__all__ = ["Action", "grant_record"]

Action = Literal["request", "approve", "deny", "revoke", "expire"]


def grant_record(request_id: str | None, action: Action, reason: str, actor: Party | None,
                 grant: Grant | None, flow: str | None = None,
                 requester: Party | None = None) -> dict[str, Any]:  # fmt: skip
    """``reason`` "done" for a change made, else why it was refused (``grant`` may then be
    the one asked about, or None when there is none: ``flow`` and ``requester`` say what was asked)."""
    if grant is not None:
        flow, requester = grant.flow, grant.requester
    return {
        "ts": int(time.time() * 1000) / 1000, "request_id": request_id, "event": "grant", "action": action,
        "decision": "allow" if reason == "done" else "deny", "reason": reason,
        "grant_id": grant.id if grant else None,
        "subject": requester.sub if requester else None, "issuer": requester.iss if requester else None,
        "actor": actor.as_json() if actor else None,
        "approver": grant.decided_by.as_json() if grant and grant.decided_by else None,
        "flows": [flow] if flow else [], "status": grant.state if grant else None,
        "expires_at": grant.expires_at if grant else None,
        "detail": grant.reason if grant and action == "request" else None,
    }  # fmt: skip
