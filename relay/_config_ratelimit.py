"""Builder for a flow's ``rate_limit``: one table, or a list of tables that must all admit.

``rate = "100/s"`` reads as 100 requests per second; ``burst`` defaults to the rate per
second rounded up (at least 1), so "6000/min" may burst 100 and "10/h" 1. ``mode =
"shared"`` counts the limit in ``[shared] redis`` (checked with the whole file, by
``check_shared_limits``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from relay._config_read import NAME, NAME_RULE, Problems, Table, describe
from relay.config import FlowConfig, RateLimit

_KEYS = ("name", "per", "rate", "burst", "mode")
_MODES: tuple[Literal["local", "shared"], ...] = ("local", "shared")
_PER: tuple[Literal["subject", "group", "client", "flow"], ...] = ("subject", "group", "client", "flow")
#: the identity a key needs: a flow without tokens has no subject or groups to count
_NEEDS_TOKEN = ("subject", "group")
_RATE = re.compile(r"([1-9][0-9]{0,9})/(s|min|h|d)")
_PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_BURST = 10**9


def build_rate_limits(t: Table, name: str, requires_token: bool) -> tuple[RateLimit, ...]:
    """The limits under ``name`` of the flow table ``t``."""
    value = t.data.get(name)
    if value is None:
        return ()
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = [(t.path(name), value)]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = [(f"{t.path(name)}[{i}]", v) for i, v in enumerate(value)]
    else:
        t.problem(name, f"must be a table or a list of tables, not {describe(value)}")
        return ()
    limits = []
    seen: set[str] = set()
    for key, data in items:
        limit = _limit(Table(t.problems, data, key, _KEYS, t.label), requires_token)
        if limit is None:
            continue
        if limit.name in seen:
            t.report(key, f"another limit of this flow is named '{limit.name}': give each a distinct name")
        seen.add(limit.name)
        limits.append(limit)
    return tuple(limits)


def _limit(t: Table, requires_token: bool) -> RateLimit | None:
    if not t.has("per"):
        t.problem("per", f"required key 'per' is missing (one of {', '.join(_PER)})")
        return None
    per = t.choice("per", "flow", _PER)
    if per in _NEEDS_TOKEN and not requires_token:
        t.problem("per", f"'{per}' needs a verified token, and this flow has auth = \"none\"")
    name = t.string("name", per)
    if not NAME.fullmatch(name):
        t.problem("name", f"'{name}' is not {NAME_RULE}")
    rate = t.require_str("rate")
    if not rate:
        return None
    match = _RATE.fullmatch(rate)
    if match is None:
        t.problem("rate", f"'{rate}' is not a rate such as \"100/s\", \"6000/min\", \"10/h\" or \"500/d\"")
        return None
    count, period = int(match[1]), _PERIODS[match[2]]
    burst = t.integer("burst", max(1, math.ceil(count / period)), 1, _MAX_BURST)
    mode = t.choice("mode", "local", _MODES)
    return RateLimit(name=name, per=per, count=count, period=period, burst=burst, mode=mode)


def check_shared_limits(problems: Problems, flows: tuple[FlowConfig, ...], have_redis: bool) -> None:
    """A shared limit needs the Redis of ``[shared]`` to be counted in."""
    if have_redis:
        return
    for i, flow in enumerate(flows):
        for limit in flow.rate_limits:
            if limit.mode == "shared":
                problems.add(f"flow[{i}].rate_limit", f"limit '{limit.name}' has mode = \"shared\", which needs "
                             "[shared] redis: set it, or count the limit in each process with mode = \"local\"")
