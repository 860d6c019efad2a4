"""Checks that look at all flows together: unique names, no two flows for one
(path, method), and authentication that can actually happen.

A flow serves HEAD whenever it takes GET (``relay.http_rules.served_methods``); two
flows may therefore not split GET and HEAD of one path between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.http_rules import served_methods

if TYPE_CHECKING:
    from relay._config_read import Problems
    from relay.config import FlowConfig


def check_flows(problems: Problems, flows: tuple[FlowConfig, ...], have_issuers: bool) -> None:
    """Record every problem that needs more than one flow (or the issuer list) to see."""
    names: dict[str, int] = {}
    owners: dict[tuple[str, str], int] = {}  # (path, method) → index of the flow serving it
    for i, flow in enumerate(flows):
        key = f"flow[{i}]"
        if flow.name:
            if flow.name in names:
                first = names[flow.name]
                problems.add(f"{key}.name", f"flow name '{flow.name}' is already used by flow[{first}]")
            names.setdefault(flow.name, i)
        clashes: dict[int, list[str]] = {}
        if flow.path:
            for method in sorted(served_methods(flow.methods)):
                owner = owners.setdefault((flow.path, method), i)
                if owner != i:
                    clashes.setdefault(owner, []).append(method)
        for owner, methods in clashes.items():
            problems.add(
                f"{key}.methods",
                f"{_name(flow, i)} overlaps {_name(flows[owner], owner, where=True)}: "
                f"both take {', '.join(methods)} on '{flow.path}'",
            )
        _check_auth(problems, i, flow, have_issuers)


def _check_auth(problems: Problems, i: int, flow: FlowConfig, have_issuers: bool) -> None:
    key = f"flow[{i}]"
    if flow.auth == "jwt":
        if not have_issuers:
            problems.add(
                f"{key}.auth",
                f"{_name(flow, i)} requires a token but no [[issuer]] is configured "
                '(add one, or set auth = "none" to make the flow public)',
            )
        return
    for setting, used in (
        ("issuers", bool(flow.issuers)),
        ("allow", not flow.allow.is_empty()),
        ("deny", not flow.deny.is_empty()),
    ):
        if used:
            problems.add(
                f"{key}.{setting}",
                f'auth = "none" contradicts \'{setting}\': a public flow has no identity to check '
                f"({_name(flow, i)})",
            )


def _name(flow: FlowConfig, index: int, where: bool = False) -> str:
    """ "flow 'orders'" (plus its index when ``where``), or "flow[2]" for a nameless flow."""
    if not flow.name:
        return f"flow[{index}]"
    return f"flow '{flow.name}' (flow[{index}])" if where else f"flow '{flow.name}'"
