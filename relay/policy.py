"""The policy snapshot requests are served from.

A ``Policy`` is built once from a validated ``Config``: each flow's per-request work is
prepared here (the header names to drop, the header block relay adds, the sink object),
so the hot path only runs prepared objects. A reload builds a new Policy and swaps it in
one assignment; requests in flight keep the one they started with.
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.config import Config, FlowConfig, ServerConfig
from relay.routing import FlowTable
from relay.sinks import Sink


class Flow:
    """A flow as the request path uses it."""

    __slots__ = (
        "config", "name", "sink", "tees", "sink_names", "drop", "extra_headers", "max_body", "requires_token",
    )

    def __init__(self, config: FlowConfig, sinks: Mapping[str, Sink], server: ServerConfig) -> None:
        self.config = config
        self.name = config.name
        self.sink = sinks[config.sink]
        self.tees = tuple(sinks[name] for name in config.tee)
        #: the answering sink first, then the tees: the order receipts and failures are reported in
        self.sink_names = (config.sink, *config.tee)
        self.max_body = config.max_body
        self.requires_token = config.auth == "jwt"
        drop = {name.encode("latin-1") for name in server.strip_exact}
        drop.update(name.encode("latin-1") for name in config.headers.strip)
        # headers the flow sets replace whatever the client sent under the same name
        drop.update(name.lower().encode("latin-1") for name, _ in config.headers.set)
        if not config.headers.forward_authorization:
            drop.add(b"authorization")
        self.drop = frozenset(drop)
        self.extra_headers = b"".join(
            [b"X-Relay-Flow: " + config.name.encode("latin-1") + b"\r\n"]
            + [f"{name}: {value}\r\n".encode("latin-1") for name, value in config.headers.set]
        )


class Policy:
    """An immutable routing snapshot: flows, their table, the sinks they use."""

    def __init__(self, config: Config, sinks: Mapping[str, Sink], version: int) -> None:
        self.config = config
        self.version = version
        self.sinks = sinks
        self.flows = tuple(Flow(flow, sinks, config.server) for flow in config.flows)
        self.table: FlowTable[Flow] = FlowTable(self.flows)
        self.default_drop = frozenset(
            {name.encode("latin-1") for name in config.server.strip_exact} | {b"authorization"}
        )
