"""The daemon: listeners, the shared request context, reload and graceful shutdown.

``Server.run`` binds every ``server.listen`` address (TCP and Unix sockets side by side),
serves until SIGTERM/SIGINT, and then drains: listeners close, idle connections close,
requests in flight get ``server.shutdown_grace`` to finish. SIGHUP reloads the config as a
transaction (the old policy keeps serving when the new file is invalid); SIGUSR1 reopens
the audit file after rotation.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable

from relay.admin import AdminServer
from relay.audit import AuditLog
from relay.config import Config, ListenAddress, ServerConfig, load_config
from relay.context import ServerContext
from relay.control import build_commands
from relay.errors import ConfigError, StartupError
from relay.grants.file import GrantFile
from relay.grants.model import Grant
from relay.grants.service import GrantService
from relay.grants.shared import grants_table
from relay.grants.store import GrantStore, GrantsUnavailable, LocalStore, SharedStore, SupervisedStore, save_grants
from relay.identity import Authenticator, IdentitySigner
from relay.identity.key_keeper import KeyKeeper, key_record
from relay.identity.key_rotation import schedule_of
from relay.identity.key_schedule import published
from relay.identity.revocation_file import RevocationFile
from relay.identity.revocation_shared import revocations_table
from relay.cache_metrics import cache_rows
from relay.metrics import EventLoopLag, Metrics
from relay.metrics_http import serve_metrics
from relay.notify import notify
from relay.policy import Policy, needs_signer
from relay.protocol import ClientConnection
from relay.ratelimit import limit_counts
from relay.shared import SharedState
from relay.sinks import Sink, build_sink
from relay.timers import Deadlines
from relay.tokens.endpoints import token_service
from relay.unixsock import bind_unix_socket
from relay.workers import WorkerRole

log = logging.getLogger("relay.server")

_BACKLOG = 1024
_EXPIRY_SWEEP = 1.0


class Server:
    """One serving process: the only one, or a worker of a supervisor (``role``)."""

    def __init__(self, config: Config, role: WorkerRole | None = None) -> None:
        self._role = role
        self._config = role.adapt(config) if role is not None else config
        self._listeners: dict[ListenAddress, asyncio.AbstractServer] = {}
        self._stop: asyncio.Event | None = None
        self._ctx: ServerContext | None = None
        self._signer: IdentitySigner | None = None
        #: relay's signing keys, once a configuration signs anything; a lone relayd rotates
        #: them itself, a worker follows its supervisor's key set file
        self.keys: KeyKeeper | None = None
        # the directory is read at start (a reload does not move it)
        self._revocations = RevocationFile(self._config.server.state_dir)
        self._grant_file = GrantFile(self._config.server.state_dir)
        self._background: set[asyncio.Task[object]] = set()
        self.metrics = Metrics()
        #: the shared state with the other relayd behind the proxy, when ``[shared] redis`` is set
        self.shared: SharedState | None = None
        self._grants: GrantService | None = None

    @property
    def config(self) -> Config:
        return self._config

    @property
    def grants(self) -> GrantService:
        assert self._grants is not None, "the server is not running"
        return self._grants

    @property
    def context(self) -> ServerContext:
        assert self._ctx is not None, "the server is not running"
        return self._ctx

    async def run(self) -> None:
        """Serve until asked to stop, then drain. Raises StartupError when it cannot bind."""
        loop = asyncio.get_running_loop()
        config = self._config
        if self._role is not None:
            self._role.follow_supervisor()
        revoked = self._revocations.open()  # before any request: a revoked token stays revoked
        granted = self._grant_file.grants()  # and a revoked grant stays revoked
        self._stop = asyncio.Event()
        deadlines = Deadlines(loop)
        audit = AuditLog(config.audit, loop, self.metrics.count_exchanges)
        sinks = {name: build_sink(sink, deadlines) for name, sink in config.sinks.items()}
        signer = self._signer_for(config, audit)
        authenticator = Authenticator(config.issuers)
        for grant in granted:
            authenticator.grants.hold(grant)
        if config.shared.redis is not None:
            self.shared = self._share(authenticator)
        self._grants = GrantService(authenticator.grants, self._grant_store(authenticator), audit)
        policy = Policy(config, sinks, 1, signer,
                        tokens=token_service(config, signer, authenticator, audit, self.grants))  # fmt: skip
        authenticator.restore(revoked)
        await authenticator.start()
        self._ctx = ctx = ServerContext(loop, config.server, policy, audit, self.metrics, deadlines, authenticator)
        if self.shared is not None:
            ctx.shared = self.shared
            self.shared.start()
            if not await self.shared.first_session():
                log.warning("starting out of sync with Redis at %s: flows with shared_state = \"fail-closed\" "
                            "answer 503 until it is reached", config.shared.redis)
        self._spawn(self._expire_grants())
        admin = None
        if config.server.admin_socket is not None:
            admin = AdminServer(config.server.admin_socket, frozenset(), build_commands(self))
        metrics_server: asyncio.AbstractServer | None = None
        # before the sockets accept: a client or supervisor seeing relayd listen may signal it
        # at once, and a SIGTERM must then drain, not kill
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, audit.reopen)
        try:
            await self._bind(config.server)
            if admin is not None:
                await admin.start()
            if config.server.metrics_listen is not None and self._role is None:
                metrics_server = await serve_metrics(config.server.metrics_listen, self._render_metrics)
        except BaseException:
            await self._close_listeners()
            await authenticator.close()
            if self.keys is not None:
                await self.keys.close()
            audit.close()
            raise
        lag = EventLoopLag(loop)
        self._watch_gauges(lag)
        lag.start()
        deadlines.start()
        log.info("relayd serving on %s", ", ".join(a.spec for a in config.server.listen))
        if self._role is None:
            notify("READY=1")
        await self._stop.wait()
        if self._role is None:
            notify("STOPPING=1")
        if admin is not None:
            await admin.close()
        if metrics_server is not None:
            metrics_server.close()
        await self._drain(self._config.server.shutdown_grace)
        lag.stop()
        deadlines.stop()
        for sink in ctx.policy.sinks.values():
            await sink.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.shared is not None:
            await self.shared.close()
        await authenticator.close()
        if self.keys is not None:
            await self.keys.close()
        audit.close()
        log.info("relayd stopped")

    async def save_revocations(self) -> str | None:
        """Write the revocations held to the state file; what went wrong, if anything.

        A worker saves nothing: its supervisor keeps the file for all of them."""
        if self._role is not None:
            return None
        try:
            await self._revocations.save(self.context.authenticator.revocations)
        except OSError as exc:
            return f"{self._revocations.path}: {exc.strerror or exc}"
        return None

    def _spawn(self, work: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(work)
        self._background.add(task)  # held until done: a task only the loop references may be collected
        task.add_done_callback(self._background.discard)

    def _share(self, authenticator: Authenticator) -> SharedState:
        book = authenticator.grants

        def received(grants: list[Grant]) -> None:
            if [grant for grant in grants if book.hold(grant)]:
                self._spawn(self._save_grants())

        tables = (
            revocations_table(authenticator.revocations, authenticator.restore, self.save_revocations, self._spawn),
            grants_table(lambda: book.grants(time.time()), received),
        )
        return SharedState(self._config.shared, {table.name: table for table in tables})

    def _grant_store(self, authenticator: Authenticator) -> GrantStore:
        """Where this process has grant changes made (``relay.grants.store``)."""
        if self._role is not None:
            return SupervisedStore(self._role.supervisor_admin)
        local = LocalStore(authenticator.grants, self._grant_file)
        return SharedStore(self.shared, local) if self.shared is not None else local

    async def _save_grants(self) -> None:
        try:
            await save_grants(self._grant_file, self.context.authenticator.grants)
        except OSError as exc:
            log.error("grants received from Redis not saved to %s: %s", self._grant_file.path, exc.strerror or exc)

    async def _expire_grants(self) -> None:
        """Mark grants past their end expired, each once: a second's delay only dates the
        record, since a grant is refused from its end whether or not it is marked."""
        while True:
            await asyncio.sleep(_EXPIRY_SWEEP)  # a period, not a wait for an event
            try:
                await self.grants.expire_due()
            except GrantsUnavailable as exc:
                log.debug("grant expiry deferred: %s", exc)

    async def _render_metrics(self) -> bytes:
        return self.metrics.render()

    def _signer_for(self, config: Config, audit: AuditLog) -> IdentitySigner | None:
        """relay's signer once ``config`` signs anything (signed identities, issued tokens);
        its key set is opened then and kept from there on."""
        if self._signer is None and needs_signer(config):
            server = config.server
            # the state directory is the one read at start (a reload does not move it)
            keeper = KeyKeeper(self._config.server.state_dir, server.identity_key, schedule_of(server, config.flows, config.tokens),
                               server.identity_jwks_refresh, decides=self._role is None,
                               on_transition=lambda times, state: audit.record(key_record(times, state)))  # fmt: skip
            try:
                ring = keeper.open()
            except (OSError, ValueError) as exc:
                raise StartupError(f"signing keys {keeper.path}: {exc}") from None
            keeper.start()
            self.keys = keeper
            self._signer = IdentitySigner(ring, keeper.follow)
        return self._signer

    def _watch_gauges(self, lag: EventLoopLag) -> None:
        ctx = self.context
        self.metrics.watch("relay_connections", lambda: len(ctx.connections))
        self.metrics.watch("relay_in_flight_requests", lambda: ctx.exchanges)
        self.metrics.watch("relay_event_loop_lag_seconds", lambda: lag.seconds)
        self.metrics.watch("relay_policy_version", lambda: ctx.policy.version)
        self.metrics.watch("relay_audit_pending_records", lambda: ctx.audit.pending)
        self.metrics.watch("relay_audit_write_failures", lambda: ctx.audit.write_failures)
        if (shared := self.shared) is not None:
            self.metrics.watch("relay_shared_state_in_sync", lambda: float(shared.in_sync))
            self.metrics.watch("relay_shared_state_disconnects", lambda: shared.disconnects)
            self.metrics.watch("relay_shared_state_unsynced_requests", lambda: shared.unsynced_requests)
        self.metrics.watch("relay_signing_keys_published", self._published_keys)
        self.metrics.watch("relay_gc_collected_objects", lambda: sum(gen["collected"] for gen in gc.get_stats()))
        self.metrics.watch("relay_signing_key_age_seconds", self._signing_key_age)
        self.metrics.on_snapshot(lambda metrics: _copy_identity_counters(metrics, ctx.authenticator))
        self.metrics.on_snapshot(lambda metrics: metrics.set_response_caches(cache_rows(ctx.policy.flows)))
        self.metrics.on_snapshot(
            lambda metrics: metrics.set_rate_limits(limit_counts((flow.name, flow.limiter) for flow in ctx.policy.flows)))
        # requests are counted from their audit notes, as those are flushed: flush them now
        self.metrics.on_snapshot(lambda metrics: ctx.audit.flush())

    def _published_keys(self) -> float:
        return 0.0 if self.keys is None else len(published(self.keys.ring.times(), time.time()))

    def _signing_key_age(self) -> float:
        if self.keys is None:
            return 0.0
        now = time.time()
        return now - self.keys.ring.signing(now).times.activates

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # --- listeners ---------------------------------------------------------------------

    async def _bind(self, server: ServerConfig) -> None:
        for address in server.listen:
            if address not in self._listeners:
                self._listeners[address] = await self._listen(address, server)

    async def _listen(self, address: ListenAddress, server: ServerConfig) -> asyncio.AbstractServer:
        ctx = self._ctx
        assert ctx is not None
        loop = ctx.loop
        inherited = self._role.socket_for(address) if self._role is not None else None
        try:
            # a partial, not a lambda with keywords: one Python frame and one dict fewer a connection
            factory = functools.partial(ClientConnection, ctx, address.path is not None)
            if inherited is not None:
                if address.path is not None:
                    return await loop.create_unix_server(factory, sock=inherited, backlog=_BACKLOG)
                return await loop.create_server(factory, sock=inherited, backlog=_BACKLOG)
            if address.path is not None:
                sock = bind_unix_socket(address.path, server.socket_mode)
                return await loop.create_unix_server(factory, sock=sock, backlog=_BACKLOG)
            assert address.port is not None
            return await loop.create_server(factory, address.host, address.port, reuse_address=True, backlog=_BACKLOG)
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise StartupError(f"cannot listen on {address.spec}: {reason}") from None

    async def _close_listeners(self, keep: frozenset[ListenAddress] = frozenset()) -> None:
        for address in [a for a in self._listeners if a not in keep]:
            listener = self._listeners.pop(address)
            listener.close()
            await listener.wait_closed()
            if address.path is not None and self._role is None:  # a supervisor's socket is its own
                try:
                    os.unlink(address.path)
                except FileNotFoundError:
                    pass

    # --- reload ------------------------------------------------------------------------

    def reload(self) -> None:
        asyncio.get_running_loop().create_task(self.apply_reload())

    async def apply_reload(self) -> list[str]:
        """Load the config file again and switch to it; on any error keep the running one.

        Returns the problems found (empty on success). Listeners that did not change
        stay bound; sinks whose configuration did not change are kept with their pools.
        """
        if self._role is not None:
            return await self._reload()
        notify("RELOADING=1")
        try:
            return await self._reload()
        finally:
            notify("READY=1")

    async def _reload(self) -> list[str]:
        ctx = self._ctx
        assert ctx is not None
        try:
            config = load_config(self._config.path)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            for problem in problems:
                log.error("reload rejected: %s", problem)
            return problems
        if self._role is not None:
            if config.server.listen != self._config.server.listen:
                log.error("reload rejected: server.listen changed (restart relayd to apply it)")
                return ["server.listen: changing the listen addresses of several workers needs a restart"]
            config = self._role.adapt(config)
        old_policy = ctx.policy
        sinks: dict[str, Sink] = {}
        for name, sink_config in config.sinks.items():
            old = old_policy.sinks.get(name)
            same = old is not None and old_policy.config.sinks[name] == sink_config
            sinks[name] = old if same and old is not None else build_sink(sink_config, ctx.deadlines)
        try:
            signer = self._signer_for(config, ctx.audit)
            await self._bind(config.server)
        except StartupError as exc:
            log.error("reload rejected: %s", exc)
            await self._close_listeners(keep=frozenset(self._config.server.listen))
            return [str(exc)]
        await self._close_listeners(keep=frozenset(config.server.listen))
        ctx.apply(config.server)
        ctx.authenticator.update(config.issuers)
        tokens = token_service(config, signer, ctx.authenticator, ctx.audit, self.grants)
        ctx.policy = Policy(config, sinks, old_policy.version + 1, signer, old_policy, tokens)
        self._config = config
        if self.keys is not None:
            self.keys.reconfigure(schedule_of(config.server, config.flows, config.tokens),
                                  config.server.identity_jwks_refresh)  # fmt: skip
        retired = [s for name, s in old_policy.sinks.items() if sinks.get(name) is not s]
        if retired:
            # requests already using them finish first
            ctx.loop.call_later(config.server.shutdown_grace, self._close_sinks, retired)
        log.info("reloaded %s: policy version %d, %d flows", config.path, ctx.policy.version, len(config.flows))
        return []

    def _close_sinks(self, sinks: list[Sink]) -> None:
        for sink in sinks:
            asyncio.get_running_loop().create_task(sink.close())

    # --- shutdown ----------------------------------------------------------------------

    async def _drain(self, grace: float) -> None:
        ctx = self._ctx
        assert ctx is not None
        ctx.draining = True
        await self._close_listeners()
        deadline = ctx.loop.time() + grace
        while True:
            for conn in list(ctx.connections):
                conn.close_if_idle()
            if not any(conn.busy for conn in ctx.connections) or ctx.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.abort()


def _copy_identity_counters(metrics: Metrics, authenticator: Authenticator) -> None:
    """The token cache and the key stores count for themselves; metrics shows their totals."""
    cache = authenticator.cache_stats()
    metrics.set_token_cache(cache["hits"], cache["misses"])
    for keys in authenticator.key_status():
        metrics.set_jwks_fetches(keys["issuer"], keys["fetches"] - keys["failures"], keys["failures"])

