"""The audit records of relay's token endpoints: one per token decision.

They sit next to the request's own record (same ``request_id``), which says how the HTTP
exchange went; these say what was decided about tokens, and for whom: ``event``
(``token_exchange`` or ``token_introspection``), ``decision`` (``allow``/``deny``),
``reason``, ``subject`` and ``issuer`` (the subject token's), ``actor`` (the actor
token's ``sub`` and ``iss``), ``flows``, and the ``jti`` and ``exp`` of the token issued
or looked at.
"""

from __future__ import annotations

import time
from typing import Any

from relay.identity.claims import Identity

__all__ = ["exchange_record", "introspection_record"]


def _who(identity: Identity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {"sub": identity.subject, "iss": identity.claims.get("iss")}


def exchange_record(request_id: str, reason: str, subject: Identity | None, actor: Identity | None,
                    flows: tuple[str, ...], jti: str | None = None,
                    exp: int | None = None) -> dict[str, Any]:  # fmt: skip
    """``reason`` "issued" when a token was issued, else why not."""
    return {
        "ts": int(time.time() * 1000) / 1000, "request_id": request_id, "event": "token_exchange",
        "decision": "allow" if reason == "issued" else "deny", "reason": reason,
        "subject": subject.subject if subject else None, "issuer": subject.issuer if subject else None,
        "actor": _who(actor), "flows": list(flows), "jti": jti, "exp": exp,
    }  # fmt: skip


def introspection_record(request_id: str, caller: Identity | None, reason: str,
                         token: Identity | None) -> dict[str, Any]:  # fmt: skip
    """``reason``: "active", or why the token is not (the authenticator's refusal reason)."""
    return {
        "ts": int(time.time() * 1000) / 1000, "request_id": request_id, "event": "token_introspection",
        "decision": "allow", "reason": reason, "caller": _who(caller),
        "subject": token.subject if token else None, "issuer": token.issuer if token else None,
        "flows": sorted(token.flows) if token and token.flows is not None else None,
        "jti": token.jti if token else None,
    }  # fmt: skip
