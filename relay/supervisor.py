"""The supervisor of ``server.workers = N`` worker processes.

It binds the listen sockets (see ``relay.workers``), starts the workers and restarts
one that dies (after 1 s, doubling to 30 s while it keeps dying young), and serves the
admin socket by asking every worker over its private one: counters are merged, actions
(reload, revoke, cache purge, log level) go to all. SIGTERM stops the workers (each
drains its requests) and waits for them; SIGHUP reloads them all after checking the new
file itself; SIGUSR1 reaches every worker (audit files reopened).

Signing keys have one decider: the supervisor keeps relay's key set
(``relay.identity.key_keeper``), creating it before any worker starts and rotating it on
schedule; workers only read the file, and see each new version within a second. The
supervisor audits each transition it makes in its own audit file (``NAME.supervisor.EXT``),
so one made while no worker runs (all restarting with a supervisor killed) is recorded too.

Revocations have one path: the supervisor keeps the state file
(``relay.identity.revocation_file``), and every worker reads it before it serves. A
``revoke`` is saved first, then told to every live worker, and acknowledged once each
has confirmed; a worker between lives reads the saved file when it starts again. Saving
and starting a worker take turns (``_turn``), so a worker either started after the file
was written or is among those told.

Just-in-time grants take the same path the other way round: a worker asks the
supervisor to make a change (``grants put``); the supervisor takes it only over an
earlier state of the grant (so two workers deciding at once get one winner), saves
``grants.json``, has every live worker hold it (``grants hold``) and only then answers.
relayctl's ``grants`` commands are carried out by one worker, which audits them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import cast

import orjson

from relay import __version__
from relay.admin import (
    AdminReply,
    AdminRequest,
    AdminServer,
    CachePurgeReply,
    CacheStatsReply,
    CommandError,
    CommandTable,
    GrantsReply,
    KeysReply,
    MetricsReply,
    ReloadReply,
    RevokeReply,
    SnapshotReply,
    StatsReply,
    StatusReply,
    ask,
)
from relay.audit import AuditLog
from relay.config import Config, ListenAddress, load_config
from relay.control import revocation_of, rotate_keys
from relay.errors import ConfigError, StartupError
from relay.grants.file import GrantFile, documents
from relay.grants.model import Grant, GrantBook
from relay.identity.key_keeper import KeyKeeper, key_record
from relay.identity.key_rotation import schedule_of
from relay.identity.revocation import Revocations
from relay.identity.revocation_file import RevocationFile
from relay.metrics import Snapshot, flow_stats, merge, render
from relay.metrics_http import serve_metrics
from relay.notify import notify
from relay.policy import needs_signer
from relay.unixsock import bind_unix_socket
from relay.workers import WorkerRole, supervisor_path, worker_path

log = logging.getLogger("relay.supervisor")

_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 30.0
_HEALTHY_AFTER = 60.0  # a worker that lived this long starts over at the first backoff
_ASK_TIMEOUT = 10.0
_READY_TIMEOUT = 30.0
#: commands every worker must carry out, answered ok only when all did
_BROADCAST = ("keys refresh", "log-level")
#: commands any one worker can answer for all
_ANY_ONE = ("flows", "grants list", "grants approve", "grants deny", "grants revoke")
#: how a revoke reply describes a worker between two lives
_RESTARTING = "restarting: it reads the saved revocations before it serves"


def _count(reply: Mapping[str, object], key: str) -> int:
    value = reply.get(key, 0)
    return value if isinstance(value, int) else 0


class Worker:
    def __init__(self, role: WorkerRole, admin_path: str) -> None:
        self.role = role
        self.admin_path = admin_path
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    def __init__(self, config: Config) -> None:
        if config.server.admin_socket is None:
            raise StartupError("server.workers > 1 needs server.admin_socket")
        self._config = config
        self._sockets: list[socket.socket] = []
        self._workers: list[Worker] = []
        self._stopping = False
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._revocations = Revocations()
        self._revocation_file = RevocationFile(config.server.state_dir)
        self._grants = GrantBook()
        self._grant_file = GrantFile(config.server.state_dir)
        #: held while the revocations file changes and while a worker is started
        self._turn = asyncio.Lock()
        #: relay's signing keys, decided here for every worker once the configuration signs anything
        self._keys: KeyKeeper | None = None
        #: the key transitions this process decides, audited even while no worker runs
        self._audit: AuditLog | None = None

    # --- sockets and processes ------------------------------------------------------------

    def _bind(self) -> None:
        server = self._config.server
        fds: list[dict[str, int]] = [{} for _ in range(server.workers)]
        for address in server.listen:
            if address.path is not None:
                shared = bind_unix_socket(address.path, server.socket_mode)
                shared.listen(1024)
                self._sockets.append(shared)
                for worker_fds in fds:
                    worker_fds[address.spec] = shared.fileno()
            else:
                for worker_fds in fds:
                    sock = self._reuseport_socket(address)
                    self._sockets.append(sock)
                    worker_fds[address.spec] = sock.fileno()
        admin = server.admin_socket
        assert admin is not None
        self._workers = [
            Worker(WorkerRole(n, worker_fds, server.state_dir, os.getpid(), admin), worker_path(admin, n))
            for n, worker_fds in enumerate(fds, 1)
        ]

    @staticmethod
    def _reuseport_socket(address: ListenAddress) -> socket.socket:
        assert address.host is not None and address.port is not None
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot listen on {address.spec}: {exc.strerror or exc}") from None
        sock.listen(1024)
        return sock

    async def _keep_running(self, worker: Worker) -> None:
        backoff = _FIRST_BACKOFF
        while not self._stopping:
            started = time.monotonic()
            async with self._turn:
                worker.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "relay", "worker", "-c", self._config.path,
                    env=os.environ | worker.role.environment(), pass_fds=[s.fileno() for s in self._sockets],
                )
            code = await worker.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - started
            if lived >= _HEALTHY_AFTER:
                backoff = _FIRST_BACKOFF
            log.error("worker %d (pid %d) exited with %s after %.1fs; restarting in %.0fs",
                      worker.role.id, worker.process.pid, code, lived, backoff)
            worker.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        for worker in self._workers:
            while True:
                try:
                    if (await ask(worker.admin_path, {"cmd": "status"}, 1.0)).get("ok"):
                        break
                except (OSError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise StartupError(f"worker {worker.role.id} did not come up within {_READY_TIMEOUT:g}s")
                await asyncio.sleep(0.1)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # a corrupt file stops relayd here, before any worker serves
        self._revocations.restore(self._revocation_file.open(), time.time())
        self._open_keys(self._config)  # before any worker, which reads the key set as it starts
        for grant in self._grant_file.grants():
            self._grants.hold(grant)
        self._bind()
        keepers = [loop.create_task(self._keep_running(worker)) for worker in self._workers]
        admin_path = self._config.server.admin_socket
        assert admin_path is not None
        admin = AdminServer(admin_path, frozenset(), self._commands())
        metrics_server: asyncio.AbstractServer | None = None
        try:
            await self._wait_ready()
            await admin.start()
            if self._config.server.metrics_listen is not None:
                metrics_server = await serve_metrics(self._config.server.metrics_listen, self._render_metrics)
        except BaseException:
            await self._stop_workers(keepers)
            await self._close_keys()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_audit)
        log.info("relayd supervising %d workers on %s", len(self._workers),
                 ", ".join(a.spec for a in self._config.server.listen))
        notify("READY=1")
        await self._stop.wait()
        notify("STOPPING=1")
        await admin.close()
        if metrics_server is not None:
            metrics_server.close()
        await self._stop_workers(keepers)
        await self._close_keys()
        log.info("relayd stopped")

    async def _close_keys(self) -> None:
        if self._keys is not None:
            await self._keys.close()
        if self._audit is not None:
            self._audit.close()

    def _open_keys(self, config: Config) -> None:
        """Open (or start) the key set when ``config`` is the first to sign anything.
        Raises StartupError."""
        if self._keys is not None or not needs_signer(config):
            return
        server = config.server
        # in the directory the workers were given at start, whatever a reloaded file says
        state_dir = self._config.server.state_dir
        audit_config = self._config.audit  # its path as read at start, like the workers'
        self._audit = audit = AuditLog(dataclasses.replace(audit_config, path=supervisor_path(audit_config.path)),
                                       asyncio.get_running_loop())  # fmt: skip
        keeper = KeyKeeper(state_dir, server.identity_key, schedule_of(server, config.flows, config.tokens),
                           server.identity_jwks_refresh, decides=True,
                           on_transition=lambda times, state: audit.record(key_record(times, state)))  # fmt: skip
        try:
            keeper.open()
        except (OSError, ValueError) as exc:
            raise StartupError(f"signing keys {keeper.path}: {exc}") from None
        keeper.start()
        self._keys = keeper

    def _reopen_audit(self) -> None:
        """SIGUSR1: every audit file is reopened (after a rotation moved them), this one's too."""
        if self._audit is not None:
            self._audit.reopen()
        self._signal_workers(signal.SIGUSR1)

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    async def _stop_workers(self, keepers: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self._signal_workers(signal.SIGTERM)
        grace = self._config.server.shutdown_grace + 10
        processes = [w.process for w in self._workers if w.process is not None]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in processes))
        except TimeoutError:
            log.error("workers still running %gs after SIGTERM: killing them", grace)
            self._signal_workers(signal.SIGKILL)
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        for address in self._config.server.listen:
            if address.path is not None and os.path.exists(address.path):
                os.unlink(address.path)

    async def reload(self) -> list[str]:
        """Check the file, then have every worker load it. Returns the problems found."""
        try:
            config = load_config(self._config.path)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        else:
            problems = []
            if config.server.listen != self._config.server.listen or config.server.workers != len(self._workers):
                problems.append("server.listen and server.workers take effect at the next restart")
            try:
                self._open_keys(config)  # a worker that starts signing reads the key set at once
            except StartupError as exc:
                problems.append(str(exc))
        if problems:
            for problem in problems:
                log.error("reload rejected: %s", problem)
            return problems
        notify("RELOADING=1")
        try:
            for reply in await self._ask_all({"cmd": "reload"}):
                if not reply.get("ok"):
                    found = reply.get("problems")
                    problems.extend(map(str, found) if isinstance(found, list) else [str(reply.get("error"))])
        finally:
            notify("READY=1")
        if not problems and self._keys is not None:
            self._keys.reconfigure(schedule_of(config.server, config.flows, config.tokens),
                                   config.server.identity_jwks_refresh)  # fmt: skip
        return problems

    # --- the admin socket ------------------------------------------------------------------

    async def _ask_all(self, request: Mapping[str, object]) -> list[dict[str, object]]:
        try:
            return list(await asyncio.gather(*(ask(w.admin_path, request) for w in self._workers)))
        except (OSError, TimeoutError, ValueError) as exc:
            raise CommandError(f"a worker did not answer: {exc}") from None

    async def revoke(self, request: AdminRequest) -> RevokeReply:
        """Save the revocation, then have every live worker hold it; ok once all confirmed."""
        kind, value, ttl = revocation_of(request)
        async with self._turn:
            try:
                until = self._revocations.add(kind, value, ttl, time.time())
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            try:
                await self._revocation_file.save(lambda: self._revocations.entries(time.time()))
                unsaved = None
            except OSError as exc:
                unsaved = f"{self._revocation_file.path}: {exc.strerror or exc}"
            told = [w for w in self._workers if w.alive]
        answers = dict(zip(told, await asyncio.gather(*(self._tell(w, request) for w in told))))
        rows: list[dict[str, object]] = []
        problems = [] if unsaved is None else [f"not saved ({unsaved}): a restarted worker will not hold it"]
        for worker in self._workers:
            state = answers.get(worker, _RESTARTING)
            rows.append({"id": worker.role.id, "pid": worker.process.pid if worker.process else None,
                         "state": state})
            if state != "revoked" and (state != _RESTARTING or unsaved is not None):
                problems.append(f"worker {worker.role.id}: {state}")
        reply = RevokeReply(ok=not problems, kind=kind, value=value, until=round(until, 3), workers=rows)
        if problems:
            reply["error"] = "; ".join(problems)
        return reply

    async def put_grant(self, request: AdminRequest) -> GrantsReply:
        """Make a worker's grant change: saved, then held by every live worker."""
        try:
            grant = Grant.from_json(request.get("grant"))
        except ValueError as exc:
            raise CommandError(f"not a grant: {exc}") from None
        async with self._turn:
            held = self._grants.get(grant.id)
            if held is not None and held.rank >= grant.rank:
                return GrantsReply(ok=True, applied=False)
            others = [g for g in self._grants.grants(time.time()) if g.id != grant.id]
            try:
                await self._grant_file.save(lambda: documents([*others, grant]))
            except OSError as exc:
                raise CommandError(f"not saved ({self._grant_file.path}: {exc.strerror or exc})") from None
            self._grants.hold(grant)
            told = [w for w in self._workers if w.alive]
        hold = AdminRequest(cmd="grants hold", grant=grant.as_json())
        for worker, state in zip(told, await asyncio.gather(*(self._tell(w, hold, "held") for w in told))):
            if state not in ("held", _RESTARTING):
                log.error("worker %d did not take grant %s (%s): it reads it when it restarts",
                          worker.role.id, grant.id, state)
        return GrantsReply(ok=True, applied=True)

    async def _tell(self, worker: Worker, request: AdminRequest, done: str = "revoked") -> str:
        """Have ``worker`` carry out ``request``: ``done``, or why not. A worker still
        starting is waited for; one that died since reads the saved file when it restarts."""
        deadline = time.monotonic() + _ASK_TIMEOUT
        while worker.alive:
            try:
                reply = await ask(worker.admin_path, request, max(deadline - time.monotonic(), 0.1))
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    return f"no admin socket after {_ASK_TIMEOUT:g}s"
                await asyncio.sleep(0.05)  # its admin socket is not up yet
                continue
            except (OSError, TimeoutError, ValueError) as exc:
                return f"did not answer ({exc or type(exc).__name__})"
            return done if reply.get("ok") else f"refused: {reply.get('error')}"
        return _RESTARTING

    async def _render_metrics(self) -> bytes:
        try:
            return render(await self._snapshots())
        except CommandError as exc:
            return f"# {exc}\n".encode()

    async def _snapshots(self) -> Snapshot:
        replies = await self._ask_all({"cmd": "snapshot"})
        return merge(cast(Snapshot, reply["snapshot"]) for reply in replies)

    def _commands(self) -> CommandTable:
        table = CommandTable()

        async def status(request: AdminRequest) -> AdminReply:
            replies = await self._ask_all({"cmd": "status"})
            return StatusReply(
                ok=True, version=__version__, pid=os.getpid(),
                uptime_s=round(time.monotonic() - self._started, 3), config=self._config.path,
                policy_version=min(_count(r, "policy_version") for r in replies),
                connections=sum(_count(r, "connections") for r in replies),
                in_flight=sum(_count(r, "in_flight") for r in replies),
                draining=self._stopping,
                workers=[{"id": w.role.id, "pid": w.process.pid if w.process else None, "restarts": w.restarts}
                         for w in self._workers],
            )

        async def stats(request: AdminRequest) -> AdminReply:
            return StatsReply(ok=True, flows=flow_stats(await self._snapshots()))

        async def metrics(request: AdminRequest) -> AdminReply:
            return MetricsReply(ok=True, text=render(await self._snapshots()).decode())

        async def snapshot(request: AdminRequest) -> AdminReply:
            return SnapshotReply(ok=True, snapshot=await self._snapshots())  # for relayctl top

        async def reload(request: AdminRequest) -> AdminReply:
            problems = await self.reload()
            if problems:
                return ReloadReply(ok=False, error="configuration rejected", problems=problems)
            return ReloadReply(ok=True, problems=[])

        async def drain(request: AdminRequest) -> AdminReply:
            asyncio.get_running_loop().call_soon(self._stop.set)
            return AdminReply(ok=True)

        async def everyone(request: AdminRequest) -> list[dict[str, object]]:
            replies = await self._ask_all(request)
            failed = [str(r.get("error")) for r in replies if not r.get("ok")]
            if failed:
                raise CommandError("; ".join(sorted(set(failed))))
            return replies

        async def broadcast(request: AdminRequest) -> AdminReply:
            return cast(AdminReply, (await everyone(request))[0])

        async def cache_purge(request: AdminRequest) -> AdminReply:
            replies = await everyone(request)
            reply = cast(CachePurgeReply, replies[0])
            if "purged" in reply:
                reply["purged"] = sum(_count(r, "purged") for r in replies)  # each worker has its own cache
            return reply

        async def any_one(request: AdminRequest) -> AdminReply:
            return cast(AdminReply, await ask(self._workers[0].admin_path, request))

        async def keys(request: AdminRequest) -> AdminReply:
            # the issuers' keys as worker 1 holds them; relay's own as decided here
            reply = cast(KeysReply, await ask(self._workers[0].admin_path, {"cmd": "keys"}))
            if reply.get("ok") and self._keys is not None:
                reply["own"] = self._keys.status(time.time())
            return reply

        async def keys_rotate(request: AdminRequest) -> AdminReply:
            kid = rotate_keys(self._keys, request)  # the workers see the new set within a second
            reply = cast(KeysReply, await keys(request))
            reply["rotated"] = kid
            return reply

        async def cache_stats(request: AdminRequest) -> AdminReply:
            total: dict[str, int] = {}
            for reply in await self._ask_all(request):
                cache = reply.get("cache")
                for key, value in (cache.items() if isinstance(cache, dict) else ()):
                    total[key] = total.get(key, 0) + int(value)  # each worker has its own cache
            return CacheStatsReply(ok=True, cache=total)

        for name, handler in (("status", status), ("stats", stats), ("metrics", metrics), ("reload", reload),
                              ("drain", drain), ("cache stats", cache_stats), ("cache purge", cache_purge),
                              ("revoke", self.revoke), ("snapshot", snapshot), ("keys", keys),
                              ("keys rotate", keys_rotate), ("grants put", self.put_grant)):
            table.register(name, handler)
        for name in _BROADCAST:
            table.register(name, broadcast)
        for name in _ANY_ONE:
            table.register(name, any_one)
        return table
