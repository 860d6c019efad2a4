"""The policy snapshot requests are served from.

A ``Policy`` is built once from a validated ``Config``: each flow's per-request work is
prepared here (the header names to drop, the header block relay adds, the sink object),
so the hot path only runs prepared objects. A reload builds a new Policy and swaps it in
one assignment; requests in flight keep the one they started with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from relay.cached_answers import FlowCache
from relay.config import Config, FlowConfig, FlowHeaders, RateLimit, ServerConfig, split_patterns
from relay.fastpath import HeaderRules
from relay.identity import FlowAuthorizer, IdentitySigner
from relay.ratelimit import Buckets, build_limiter
from relay.response_cache import CacheCounters
from relay.routing import FlowTable
from relay.sinks import Sink
from relay.sinks.static import RenderedSink

if TYPE_CHECKING:
    from relay.tokens.endpoints import TokenService

#: where relay publishes the public keys downstream services verify its tokens with
JWKS_PATH = "/.well-known/relay-jwks.json"


class Flow:
    """A flow as the request path uses it."""

    __slots__ = (
        "config", "name", "sink", "sinks", "sink_names", "drop", "extra_headers", "max_body", "requires_token",
        "shared_fail_closed", "issuers", "authorizer", "signer", "sends_identity", "remembers_keys", "limiter", "cache",
    )

    def __init__(
        self, config: FlowConfig, sinks: Mapping[str, Sink], server: ServerConfig, signer: IdentitySigner | None,
        buckets: Mapping[tuple[str, RateLimit], Buckets] = {}, cache_counters: Mapping[str, CacheCounters] = {},
    ) -> None:
        self.config = config
        self.name = config.name
        self.sink = sinks[config.sink]
        #: the answering sink, then the tees
        self.sinks = (self.sink, *(sinks[name] for name in config.tee))
        #: the answering sink first, then the tees: the order receipts and failures are reported in
        self.sink_names = (config.sink, *config.tee)
        #: a sink keeps Idempotency-Keys, so keyed requests' bodies are fingerprinted
        self.remembers_keys = any(sink.remembers_keys for sink in self.sinks)
        self.max_body = config.max_body
        #: the flow's response cache; a reload builds every flow afresh, so it starts empty
        #: (its counters carry on)
        self.cache = (FlowCache(config.cache, config.allow.groups, cache_counters.get(config.name))
                      if config.cache is not None else None)
        self.requires_token = config.auth == "jwt"
        #: out of sync with the shared state, its token requests answer 503
        self.shared_fail_closed = config.shared_state == "fail-closed"
        self.issuers = config.issuers
        self.authorizer = FlowAuthorizer(config) if self.requires_token else None
        #: checked once the caller is authorized, before its body is read
        self.limiter = build_limiter(config.name, config.rate_limits, config.allow.groups, buckets)
        self.sends_identity = self.requires_token and config.headers.identity != "none"
        self.signer = signer if config.headers.identity == "signed" else None
        # headers the flow sets replace whatever the client sent under the same name
        also = [name for name, _ in config.headers.set]
        if not config.headers.forward_authorization:
            also.append("authorization")
        #: what scan_headers strips from this flow's requests
        self.drop = header_rules(server, (*config.headers.strip, *also))
        self.extra_headers = b"".join(
            [b"X-Relay-Flow: " + config.name.encode("latin-1") + b"\r\n"]
            + [f"{name}: {value}\r\n".encode("latin-1") for name, value in config.headers.set]
        )


class Policy:
    """An immutable routing snapshot: flows, their table, the sinks they use."""

    def __init__(
        self, config: Config, sinks: Mapping[str, Sink], version: int, signer: IdentitySigner | None,
        previous: Policy | None = None,
        tokens: TokenService | None = None,
    ) -> None:
        """``tokens``: relay's OAuth endpoints are served too (the [tokens] table)."""
        self.config = config
        self.version = version
        self.sinks = sinks
        # a limit a reload leaves unchanged (same flow name, same limit) keeps its counts
        kept = previous.rate_buckets() if previous is not None else {}
        # so do the counters of a flow's response cache, though its entries start afresh
        counted = previous.cache_counters() if previous is not None else {}
        self.flows = tuple(Flow(flow, sinks, config.server, signer, kept, counted) for flow in config.flows)
        routed = self.flows
        if signer is not None and all(flow.path != JWKS_PATH for flow in config.flows):
            routed += (_jwks_flow(signer, config.server),)
        if tokens is not None:
            routed += tokens.flows(self.flows, config.server)
        self.table: FlowTable[Flow] = FlowTable(routed)
        #: the rules for requests that match no flow (only their framing is looked at)
        self.default_drop = header_rules(config.server, ("authorization",))

    def cache_counters(self) -> dict[str, CacheCounters]:
        """Every caching flow's response-cache counters by flow name."""
        return {flow.name: flow.cache.counters for flow in self.flows if flow.cache is not None}

    def rate_buckets(self) -> dict[tuple[str, RateLimit], Buckets]:
        """Every flow's rate-limit buckets by flow name and limit."""
        return {
            (flow.name, buckets.config): buckets
            for flow in self.flows if flow.limiter is not None
            for buckets in flow.limiter.limits
        }


def header_rules(server: ServerConfig, patterns: Iterable[str]) -> HeaderRules:
    """The server's strip_headers and underscore rule, plus ``patterns``, for scan_headers."""
    names, prefixes = split_patterns((*server.strip_headers, *patterns))
    return HeaderRules([name.encode("latin-1") for name in names],
                       [prefix.encode("latin-1") for prefix in prefixes],
                       underscores=server.underscores_in_headers)  # fmt: skip


def needs_signer(config: Config) -> bool:
    """relay's key signs identities for a flow, or the tokens it issues."""
    return config.tokens is not None or any(flow.headers.identity == "signed" and flow.auth == "jwt" for flow in config.flows)


def _jwks_flow(signer: IdentitySigner, server: ServerConfig) -> Flow:
    """The built-in public flow serving relay's JWKS, the keys published at each answer.
    Verifiers may cache it for ``identity_jwks_refresh``: a key is published at least
    that long before it signs."""
    sink = RenderedSink("relay-jwks", signer.jwks, b"application/jwk-set+json", int(server.identity_jwks_refresh))
    config = FlowConfig(
        name="relay-jwks", path=JWKS_PATH, sink=sink.name, methods=("GET", "HEAD"), auth="none",
        max_body=0, headers=FlowHeaders(identity="none"),
    )
    return Flow(config, {sink.name: sink}, server, None)
