"""Flow authorization: may this identity use this flow?

A flow's ``allow`` and ``deny`` rules are compiled once into a :class:`FlowAuthorizer`;
per request only ``check`` runs. Within a rule every listed key must match (AND) and
a key matches when any of its values does (OR). An empty ``allow`` admits every
authenticated identity; an empty ``deny`` refuses nobody; deny wins over allow.
Claim keys compare the claim's string form: a string, any string in an array, or a
boolean/integer written as in JSON (``true``, ``42``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.config import FlowConfig, Rule
from relay.errors import Forbidden
from relay.identity.claims import ClaimPath, Identity

__all__ = ["FlowAuthorizer", "PolicyDenied", "authorize"]


class PolicyDenied(Forbidden):
    """403: the identity is authenticated but the flow's rules refuse it."""

    reason = "denied_by_policy"


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


def _claim_strings(value: Any) -> set[str]:
    """The string forms a claim value offers to a rule: one, or one per array element."""
    items = value if isinstance(value, list) else (value,)
    return {s for v in items if (s := _scalar(v)) is not None}


class _CompiledRule:
    """One allow or deny table ready to run; ``matches`` is the AND of its keys."""

    __slots__ = ("_subjects", "_groups", "_scopes", "_claims")

    def __init__(self, rule: Rule) -> None:
        self._subjects = frozenset(rule.subjects)
        self._groups = frozenset(rule.groups)
        self._scopes = frozenset(rule.scopes)
        self._claims = tuple((ClaimPath(path), frozenset(values)) for path, values in rule.claims)

    def matches(self, identity: Identity) -> bool:
        if self._subjects and identity.subject not in self._subjects:
            return False
        if self._groups and self._groups.isdisjoint(identity.groups):
            return False
        if self._scopes and self._scopes.isdisjoint(identity.scopes):
            return False
        claims: Mapping[str, Any] = identity.claims
        for path, accepted in self._claims:
            if accepted.isdisjoint(_claim_strings(path.find(claims))):
                return False
        return True


class FlowAuthorizer:
    """The compiled rules of one flow. Build once per policy snapshot; call ``check`` per request."""

    __slots__ = ("flow", "_allow", "_deny")

    def __init__(self, flow: FlowConfig) -> None:
        self.flow = flow.name
        self._allow = None if flow.allow.is_empty() else _CompiledRule(flow.allow)
        self._deny = None if flow.deny.is_empty() else _CompiledRule(flow.deny)

    def check(self, identity: Identity) -> None:
        """Return if ``identity`` may use the flow; raise PolicyDenied (403) if not.

        The verdict is kept on the identity, which every request with its token shares:
        rules and claims are both immutable (a reload builds new authorizers)."""
        verdicts = identity.verdicts
        if self in verdicts:
            refusal = verdicts[self]
        else:
            refusal = verdicts[self] = self._refusal(identity)
        if refusal is not None:
            raise PolicyDenied(refusal)

    def _refusal(self, identity: Identity) -> str | None:
        if identity.flows is not None:
            # relay's own token: the flow's rules held for its subject when it was issued
            return None if self.flow in identity.flows else f"flow {self.flow} is not named in the token"
        if self._deny is not None and self._deny.matches(identity):
            return f"flow {self.flow}: {identity.subject!r} matches its deny rule"
        if self._allow is not None and not self._allow.matches(identity):
            return f"flow {self.flow}: {identity.subject!r} matches no allow rule"
        return None


def authorize(identity: Identity, flow: FlowConfig) -> None:
    """One-off ``FlowAuthorizer(flow).check(identity)``; the request path keeps a built FlowAuthorizer."""
    FlowAuthorizer(flow).check(identity)
