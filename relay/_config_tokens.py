"""Builder for the ``[tokens]`` table: relay as an OAuth authorization server.

The table is optional; without it relay issues no tokens and serves none of the OAuth
endpoints. Its paths are answered before routing, so no flow may claim them.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from relay._config_flows import flow_path_problem
from relay._config_read import Table
from relay.config import FlowConfig, IssuerConfig, TokensConfig

_TOKENS = TokensConfig(issuer="")
_PATHS = ("metadata_path", "token_path", "introspection_path")
#: the ``iss`` of X-Relay-Identity tokens: an exchanged token must never be mistaken for one
_IDENTITY_ISSUER = "relay"


def build_tokens(root: Table, issuers: tuple[IssuerConfig, ...], flows: tuple[FlowConfig, ...]) -> TokensConfig | None:
    if not root.has("tokens"):
        return None
    t = Table(root.problems, root.table("tokens") or {}, "tokens", ("issuer", "subject_issuers", *_PATHS))
    issuer = t.require_str("issuer")
    if issuer:
        _check_issuer(t, issuer, issuers)
    paths = [_path(t, name, getattr(_TOKENS, name)) for name in _PATHS]
    if len(set(paths)) < len(paths):
        t.problem("token_path", "metadata_path, token_path and introspection_path must differ")
    for flow in flows:
        if flow.path in paths:
            t.problem(_PATHS[paths.index(flow.path)], f"flow {flow.name} has the same path, {flow.path}")
    subject_issuers = t.strings("subject_issuers", _TOKENS.subject_issuers)
    _check_names(t, subject_issuers, [i.name for i in issuers])
    return TokensConfig(issuer, paths[0], paths[1], paths[2], subject_issuers)


def _check_issuer(t: Table, issuer: str, issuers: tuple[IssuerConfig, ...]) -> None:
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        t.problem("issuer", "must be an https URL with no query or fragment, e.g. \"https://relay.example\"")
    elif issuer == _IDENTITY_ISSUER or any(i.issuer == issuer for i in issuers):
        t.problem("issuer", f"'{issuer}' is already the issuer of other tokens")


def _path(t: Table, name: str, default: str) -> str:
    path = t.string(name, default)
    why = flow_path_problem(path) or ("must not end with '/'" if path.endswith("/") else None)
    if why:
        t.problem(name, why)
    return path


def _check_names(t: Table, names: tuple[str, ...], known: Collection[str]) -> None:
    for i, name in enumerate(names):
        if name not in known:
            t.report(f"{t.path('subject_issuers')}[{i}]", f"unknown issuer '{name}'")
