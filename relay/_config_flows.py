"""Builder for ``[[flow]]`` tables: path, methods, auth, allow/deny rules, headers, sinks.

Checks that need one flow plus the configured sinks and issuers happen here; checks
across several flows (duplicates, overlaps) are in ``relay.config_checks``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any

from relay._config_cache import build_cache
from relay._config_ratelimit import build_rate_limits
from relay._config_read import HEADER_NAME, NAME, NAME_RULE, Table, label
from relay._toml_locate import join_key
from relay.config import ApprovalConfig, FlowConfig, FlowHeaders, Rule, strips
from relay.http_rules import CONNECTION_FIELDS

_FLOW = FlowConfig(name="", path="", sink="")
_FLOW_KEYS = (
    "name", "path", "sink", "methods", "auth", "issuers", "allow", "deny", "tee", "max_body", "shared_state",
    "headers", "rate_limit", "max_token_ttl", "actor_must_be_allowed", "approval", "cache",
)
_APPROVAL_KEYS = ("approvers", "max_ttl")
_HEADERS_KEYS = ("set", "strip", "identity", "forward_authorization")
_RULE_KEYS = ("subjects", "groups", "scopes")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
_REFUSED_METHODS = {
    "CONNECT": "CONNECT is refused: relay does not open tunnels",
    "TRACE": "TRACE is refused: it would echo credentials back to the caller",
}
#: framing and hop-by-hop headers belong to the connection, so a flow may not set them
_UNSETTABLE = CONNECTION_FIELDS | {"host", "content-length"}
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e]")  # header values relay sets are printable ASCII
_BAD_PATH = re.compile(r"[\x00-\x20\x7f%#?\\]")
_TiB = 1024**4
_DAY = 86400.0


def build_flows(
    root: Table,
    tables: list[tuple[int, dict[str, Any]]],
    sinks: Collection[str],
    issuers: Collection[str],
) -> tuple[FlowConfig, ...]:
    """Build every ``[[flow]]`` (given with its index); ``sinks`` and ``issuers`` are the
    names declared in the file, whether or not their own tables were valid."""
    return tuple(
        _flow(Table(root.problems, data, f"flow[{i}]", _FLOW_KEYS, label("flow", data)), sinks, issuers)
        for i, data in tables
    )


def flow_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a flow path, or None when it is already in normalized form."""
    if not path.startswith("/"):
        return "must start with '/'"
    bad = _BAD_PATH.search(path)
    if bad:
        return f"must be written decoded and plain: {bad.group()!r} is not allowed"
    segments = path.split("/")[1:]
    if "" in segments[:-1]:
        return "must not contain empty segments ('//')"
    if "." in segments or ".." in segments:
        return "must not contain '.' or '..' segments"
    return None


def _flow(t: Table, sinks: Collection[str], issuer_names: Collection[str]) -> FlowConfig:
    name = t.require_str("name")
    if name and not NAME.fullmatch(name):
        t.problem("name", f"'{name}' is not {NAME_RULE}")
    path = t.require_str("path")
    why = flow_path_problem(path) if path else None
    if why:
        t.problem("path", why)
        path = ""  # checks across flows skip what is already reported
    sink = t.require_str("sink")
    if sink and sink not in sinks:
        t.problem("sink", _unknown("sink", sink, sinks))
    tee = t.strings("tee", _FLOW.tee)
    for i, copy in enumerate(tee):
        if copy == sink:
            t.report(f"{t.path('tee')}[{i}]", f"'{copy}' is already the flow's sink")
        elif copy not in sinks:
            t.report(f"{t.path('tee')}[{i}]", _unknown("sink", copy, sinks))
    issuers = t.strings("issuers", _FLOW.issuers)
    for i, issuer in enumerate(issuers):
        if issuer not in issuer_names:
            t.report(f"{t.path('issuers')}[{i}]", _unknown("issuer", issuer, issuer_names))
    auth = t.choice("auth", _FLOW.auth, ("jwt", "none"))
    max_token_ttl = t.duration("max_token_ttl", _FLOW.max_token_ttl, 1.0, _DAY)
    return FlowConfig(
        name=name,
        path=path,
        sink=sink,
        methods=_methods(t),
        auth=auth,
        issuers=issuers,
        allow=_rule(t, "allow"),
        deny=_rule(t, "deny"),
        tee=tee,
        max_body=t.size("max_body", _FLOW.max_body, 0, _TiB),
        headers=_headers(t),
        rate_limits=build_rate_limits(t, "rate_limit", auth == "jwt"),
        shared_state=t.choice("shared_state", _FLOW.shared_state, ("fail-closed", "fail-open")),
        max_token_ttl=max_token_ttl,
        actor_must_be_allowed=t.boolean("actor_must_be_allowed", _FLOW.actor_must_be_allowed),
        approval=_approval(t, auth, max_token_ttl),
        cache=build_cache(t),
    )


def _approval(t: Table, auth: str, max_token_ttl: float | None) -> ApprovalConfig | None:
    """``approval = { approvers = {...}, max_ttl = "1h" }``: grants are used by token
    exchange, so the flow needs tokens and ``max_token_ttl``."""
    data = t.table("approval")
    if data is None:
        return None
    a = Table(t.problems, data, t.path("approval"), _APPROVAL_KEYS, t.label)
    if auth != "jwt":
        a.problem("", "a flow with auth = \"none\" needs no grants")
    elif max_token_ttl is None:
        a.problem("", "grants are used through token exchange: set max_token_ttl too")
    if "approvers" not in data:
        a.problem("approvers", "required key 'approvers' is missing (who may approve, as in allow)")
    approvers = _rule(a, "approvers")
    max_ttl = a.duration("max_ttl", None, 1.0, 30 * _DAY)
    if max_ttl is None and "max_ttl" not in data:
        a.problem("max_ttl", "required key 'max_ttl' is missing (the longest a grant may last)")
    return ApprovalConfig(approvers, max_ttl or 3600.0)


def _unknown(kind: str, name: str, known: Collection[str]) -> str:
    if not known:
        return f"unknown {kind} '{name}' (no {kind}s are configured)"
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown {kind} '{name}' ({hint})"


def _methods(t: Table) -> tuple[str, ...]:
    methods = t.strings("methods", _FLOW.methods)
    for i, method in enumerate(methods):
        upper = method.upper()
        if upper in _REFUSED_METHODS:
            why = _REFUSED_METHODS[upper]
        elif _METHOD.fullmatch(method):
            continue
        elif _METHOD.fullmatch(upper):
            why = f"methods are case-sensitive: write '{upper}'"
        else:
            why = f"'{method}' is not an HTTP method"
        t.report(f"{t.path('methods')}[{i}]", why)
    return methods


def _rule(t: Table, name: str) -> Rule:
    """An allow/deny table: subjects, groups, scopes; any other key is a claim to match."""
    data = t.table(name)
    if data is None:
        return Rule()
    r = Table(t.problems, data, t.path(name), data.keys(), t.label)
    if not data:
        r.problem("", "an empty rule matches nothing: remove it or list what it should match")
    for key in data:
        close = difflib.get_close_matches(key, _RULE_KEYS, n=1, cutoff=0.75)
        if key not in _RULE_KEYS and close:
            # almost certainly a typo: as a claim name it would silently never match
            r.problem(key, f"unknown key '{key}' (did you mean '{close[0]}'?)")
    values = {key: r.strings(key, ()) for key in data}
    return Rule(
        subjects=values.pop("subjects", ()),
        groups=values.pop("groups", ()),
        scopes=values.pop("scopes", ()),
        claims=tuple(values.items()),
    )


def _headers(t: Table) -> FlowHeaders:
    data = t.table("headers")
    if data is None:
        return FlowHeaders()
    h = Table(t.problems, data, t.path("headers"), _HEADERS_KEYS, t.label)
    pairs = []
    seen: set[str] = set()
    for header, value in (h.table("set") or {}).items():
        key = join_key(h.path("set"), header)
        lower = header.lower()
        if not HEADER_NAME.fullmatch(header):
            h.report(key, f"'{header}' is not a header name")
        elif lower in seen:
            h.report(key, f"'{header}' is set twice (header names ignore case)")
        elif lower.startswith("x-relay-"):
            h.report(key, "X-Relay-* headers are set by relay itself")
        elif lower in _UNSETTABLE:
            h.report(key, f"'{header}' belongs to the connection and cannot be set")
        elif not isinstance(value, str):
            h.report(key, f"the value must be a string, not {type(value).__name__}")
        elif _BAD_VALUE.search(value):
            h.report(key, "the value must be printable ASCII (no CR, LF, NUL or other controls)")
        else:
            pairs.append((header, value))
        seen.add(lower)
    strip = h.header_patterns("strip", ())
    default = FlowHeaders()
    forward = h.boolean("forward_authorization", default.forward_authorization)
    if forward and any(strips(pattern, "authorization") for pattern in strip):
        h.problem("forward_authorization", "contradicts strip = [..., \"Authorization\"]")
    return FlowHeaders(
        set=tuple(pairs),
        strip=strip,
        identity=h.choice("identity", default.identity, ("none", "plain", "signed")),
        forward_authorization=forward,
    )
