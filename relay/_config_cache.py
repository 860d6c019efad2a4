"""The ``cache`` table of a ``[[flow]]``, and the checks it needs from the rest of the file.

``scope = "group"`` keys entries by the first of the flow's ``allow.groups`` the caller
holds, so it needs that list; ``"subject"`` and ``"group"`` need a token (``auth =
"jwt"``); ``"public"`` may also serve an ``auth = "none"`` flow. Only flows that take
nothing but GET (and HEAD) and answer from an ``http`` sink without tees can cache.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay._config_read import Problems, Table
from relay.config import CacheConfig, FlowConfig, SinkConfig

_CACHE_KEYS = ("scope", "ttl", "max_bytes", "max_entry_bytes")
_DEFAULT = CacheConfig(scope="subject")
_TiB = 1024**4
_YEAR = 365 * 86400.0


def build_cache(flow: Table) -> CacheConfig | None:
    data = flow.table("cache")
    if data is None:
        return None
    t = Table(flow.problems, data, flow.path("cache"), _CACHE_KEYS, flow.label)
    if "scope" not in data:
        t.problem("scope", 'the scope is required: "subject", "group" or "public"')
    config = CacheConfig(
        scope=t.choice("scope", _DEFAULT.scope, ("subject", "group", "public")),
        ttl=t.duration("ttl", _DEFAULT.ttl, 0.001, _YEAR),
        max_bytes=t.size("max_bytes", _DEFAULT.max_bytes, 1, _TiB),
        max_entry_bytes=t.size("max_entry_bytes", 0, 1, _TiB),
    )
    if config.max_entry_bytes > config.max_bytes:
        t.problem("max_entry_bytes", "must not exceed max_bytes")
    return config


def entry_limit(config: CacheConfig) -> int:
    """The largest body one entry keeps; larger answers stream past the cache."""
    return config.max_entry_bytes or max(1, config.max_bytes // 8)


def check_caches(problems: Problems, flows: tuple[FlowConfig, ...], sinks: Mapping[str, SinkConfig]) -> None:
    for i, flow in enumerate(flows):
        cache = flow.cache
        if cache is None:
            continue
        key = f"flow[{i}].cache"
        others = sorted(set(flow.methods) - {"GET", "HEAD"})
        if others or "GET" not in flow.methods:
            problems.add(key, "only a flow that takes GET (and HEAD) alone can cache"
                         + (f"; it also takes {', '.join(others)}" if others else ""))
        sink = sinks.get(flow.sink)
        if sink is not None and sink.type != "http":
            problems.add(key, f"sink '{flow.sink}' is not an http sink: only upstream answers are cached")
        if flow.tee:
            problems.add(key, "a flow with tees cannot cache: each request must reach every sink")
        if cache.scope != "public" and flow.auth == "none":
            problems.add(f"{key}.scope", f'scope = "{cache.scope}" needs an identity: the flow has auth = "none"')
        if cache.scope == "group" and not flow.allow.groups:
            problems.add(f"{key}.scope", 'scope = "group" keys entries by the allow.groups the caller '
                         "matched: list them in the flow's allow.groups")
