"""What every client connection shares: limits, the current policy, identity, accounting."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from typing import TYPE_CHECKING

from relay.audit import AuditLog
from relay.config import ServerConfig
from relay.errors import AuditUnavailable, Overloaded, ServiceUnavailable, SharedStateUnavailable
from relay.identity import Authenticator
from relay.metrics import Metrics
from relay.policy import Policy
from relay.timers import Deadlines

if TYPE_CHECKING:
    from relay.exchange import Answer
    from relay.protocol import ClientConnection
    from relay.shared import SharedState


class ServerContext:
    """What every client connection shares: limits, the current policy, ids, the sweep."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: ServerConfig,
        policy: Policy,
        audit: AuditLog,
        metrics: Metrics,
        deadlines: Deadlines,
        authenticator: Authenticator,
    ) -> None:
        self.loop = loop
        self.policy = policy
        self.authenticator = authenticator
        self.audit = audit
        self.metrics = metrics
        self.deadlines = deadlines
        self.connections: set[ClientConnection] = set()
        #: exchanges started and not yet done (pipelined ones waiting their turn included)
        self.exchanges = 0
        #: the state shared with the other relayd behind the proxy (``[shared] redis``)
        self.shared: SharedState | None = None
        self.draining = False
        self._request_prefix = secrets.token_hex(4)
        self._request_counter = 0
        self.apply(server)

    def apply(self, server: ServerConfig) -> None:
        self.max_header_bytes = server.max_header_bytes
        request_timeout = server.request_timeout
        # a head cannot take longer than the whole request may
        self.header_timeout = min(server.header_timeout, request_timeout or server.header_timeout)
        self.idle_timeout = server.idle_timeout
        self.request_timeout = request_timeout
        self.min_body_rate = float(server.min_body_rate)
        self.body_rate_window = server.body_rate_window
        self.send_timeout = server.send_timeout
        self.max_connections = server.max_connections
        self.max_in_flight = server.max_in_flight
        self.max_loop_lag = server.max_loop_lag
        self.trusted_proxies = frozenset(
            str(ipaddress.ip_address(p)) for p in server.trusted_proxies if p != "unix"
        )
        self.trust_unix_peers = "unix" in server.trusted_proxies

    def next_request_id(self) -> str:
        self._request_counter += 1
        return f"{self._request_prefix}-{self._request_counter:08x}"

    def exchange_done(self, exchange: Answer) -> bool:
        """Account for a finished exchange: its audit record (the metrics count it from
        the record's note when the audit log flushes). True when its answer waits for
        that record (``exchange.committed()`` follows)."""
        self.exchanges -= 1
        request = exchange.request
        return self.audit.record_exchange(exchange, 0.0 if request is None else time.monotonic() - request.received_at)

    def overloaded(self) -> ServiceUnavailable | None:
        """The 503 a new request should be shed with now, or None: relay answers early
        rather than queue work it cannot finish in time, or relay what it cannot audit."""
        if self.exchanges >= self.max_in_flight:
            return Overloaded(f"{self.exchanges} requests in flight", retry_after=1)
        if self.max_loop_lag and self.deadlines.lag > self.max_loop_lag:
            return Overloaded(f"event loop {self.deadlines.lag * 1000:.0f} ms behind", retry_after=1)
        if self.audit.refusing:
            return AuditUnavailable("the audit log cannot be written", retry_after=1)
        return None

    def unshared(self, fail_closed: bool) -> SharedStateUnavailable | None:
        """The 503 for a request needing the shared state while out of sync with it, or None
        (in sync, nothing shared, or the flow fails open: then the request is counted)."""
        shared = self.shared
        if shared is None or shared.in_sync:
            return None
        if fail_closed:
            return SharedStateUnavailable("out of sync with the shared state in Redis", retry_after=1)
        shared.unsynced_requests += 1
        return None

    def admit(self, conn: ClientConnection) -> bool:
        if len(self.connections) >= self.max_connections or self.draining:
            return False
        self.connections.add(conn)
        self.deadlines.watch(conn)
        return True

    def release(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self.deadlines.unwatch(conn)
