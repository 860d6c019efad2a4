"""What the admin socket's commands do in a running relayd.

``build_commands`` fills a ``CommandTable`` with one handler per command, each reading
or acting on the ``Server``; a refusal is a ``CommandError`` with a readable reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Literal

from relay import __version__
from relay.admin import (
    AdminReply,
    AdminRequest,
    CachePurgeReply,
    CacheStatsReply,
    CommandError,
    CommandTable,
    FlowsReply,
    GrantsReply,
    KeysReply,
    LogLevelReply,
    MetricsReply,
    ReloadReply,
    RevokeReply,
    SnapshotReply,
    StatsReply,
    StatusReply,
)
from relay.grants.model import Grant, Party
from relay.grants.service import OPERATOR_ISSUER, Caller, GrantRefused
from relay.identity.revocation import KINDS, RevocationEntry, RevocationKind
from relay.identity.revocation_shared import TABLE, field_of
from relay.metrics import flow_stats
from relay.shared import SharedEntry
from relay.units import parse_duration

if TYPE_CHECKING:
    from relay.policy import Flow
    from relay.identity.key_keeper import KeyKeeper
    from relay.server import Server

log = logging.getLogger("relay.control")

_LEVELS = ("debug", "info", "warning", "error")
_VERBS: dict[str, Literal["approve", "deny", "revoke"]] = {
    "grants approve": "approve", "grants deny": "deny", "grants revoke": "revoke",
}
#: who a grant names when relayctl decides or revokes it
OPERATOR = Caller(Party("operator", OPERATOR_ISSUER), None)
_DEFAULT_REVOCATION = "1h"


def revocation_of(request: AdminRequest) -> tuple[RevocationKind, str, float]:
    """The kind, value and ttl (seconds) of a ``revoke`` request; raises CommandError."""
    kind = request.get("kind", "")
    value = request.get("value", "")
    if kind not in KINDS or not value:
        raise CommandError(f"revoke needs a kind ({', '.join(KINDS)}) and a value")
    try:
        ttl = parse_duration(request.get("ttl", _DEFAULT_REVOCATION))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return kind, value, ttl


def rotate_keys(keys: KeyKeeper | None, request: AdminRequest) -> str:
    """Carry out ``keys rotate`` on the deciding process's keys; the new key's kid."""
    if keys is None:
        raise CommandError("relay signs nothing with this configuration (no [tokens] table, no flow with "
                           'identity = "signed"): it holds no keys to rotate')  # fmt: skip
    if not keys.decides:
        raise CommandError("a worker does not rotate keys: ask the supervisor's admin socket")
    try:
        return keys.rotate(immediately=request.get("now", False)).times.kid
    except OSError as exc:
        raise CommandError(f"the new key set cannot be saved ({exc.strerror or exc}): nothing changed") from None


def build_commands(server: Server) -> CommandTable:
    table = CommandTable()
    started = time.monotonic()

    async def status(request: AdminRequest) -> AdminReply:
        ctx = server.context
        reply = StatusReply(
            ok=True, version=__version__, pid=os.getpid(), uptime_s=round(time.monotonic() - started, 3),
            config=server.config.path, policy_version=ctx.policy.version,
            connections=len(ctx.connections), in_flight=ctx.exchanges, draining=ctx.draining,
        )
        if server.shared is not None:
            reply["shared"] = server.shared.status()
        return reply

    async def stats(request: AdminRequest) -> AdminReply:
        return StatsReply(ok=True, flows=flow_stats(server.metrics.snapshot()))

    async def flows(request: AdminRequest) -> AdminReply:
        rows = [
            {
                "name": flow.name, "path": flow.config.path, "methods": list(flow.config.methods),
                "auth": flow.config.auth, "sink": flow.config.sink, "tee": list(flow.config.tee),
                "max_body": flow.max_body,
            }
            for flow in server.context.policy.flows
        ]
        return FlowsReply(ok=True, flows=rows)

    async def reload(request: AdminRequest) -> AdminReply:
        problems = await server.apply_reload()
        if problems:
            return ReloadReply(ok=False, error="configuration rejected", problems=problems)
        return ReloadReply(ok=True, policy_version=server.context.policy.version, problems=[])

    async def drain(request: AdminRequest) -> AdminReply:
        log.info("drain requested on the admin socket")
        # the reply must leave before shutdown closes the admin socket
        asyncio.get_running_loop().call_soon(server.stop)
        return AdminReply(ok=True)

    async def log_level(request: AdminRequest) -> AdminReply:
        level = request.get("level", "")
        if level not in _LEVELS:
            raise CommandError(f"level must be one of {', '.join(_LEVELS)}")
        logging.getLogger("relay").setLevel(level.upper())
        return LogLevelReply(ok=True, level=level)

    async def metrics(request: AdminRequest) -> AdminReply:
        return MetricsReply(ok=True, text=server.metrics.render().decode())

    def key_reply() -> KeysReply:
        reply = KeysReply(ok=True, keys=server.context.authenticator.key_status())
        if server.keys is not None:
            reply["own"] = server.keys.status(time.time())
        return reply

    async def keys(request: AdminRequest) -> AdminReply:
        return key_reply()

    async def keys_refresh(request: AdminRequest) -> AdminReply:
        results = await server.context.authenticator.refresh_keys()
        failed = sorted(name for name, ok in results.items() if not ok)
        if failed:
            raise CommandError(f"fetching keys failed for {', '.join(failed)} (the last good keys stay)")
        return key_reply()

    async def keys_rotate(request: AdminRequest) -> AdminReply:
        kid = rotate_keys(server.keys, request)
        reply = key_reply()
        reply["rotated"] = kid
        return reply

    async def revoke(request: AdminRequest) -> AdminReply:
        kind, value, ttl = revocation_of(request)
        try:
            until = server.context.authenticator.revoke(kind, value, ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        problem = await server.save_revocations()
        if problem is not None:
            # the revocation holds in this process all the same: failing open is worse
            raise CommandError(f"revoked until relayd restarts, but not saved: {problem}")
        if server.shared is not None:
            try:
                entry = RevocationEntry(kind=kind, value=value, until=until)
                await server.shared.put(TABLE, field_of(entry), SharedEntry(until, until))
            except ConnectionError as exc:
                # held and saved here; the next session with Redis pushes it to the others
                raise CommandError(f"revoked and saved here, not yet on the other instances ({exc}): "
                                   "it reaches them once Redis is back") from None
        return RevokeReply(ok=True, kind=kind, value=value, until=round(until, 3))

    async def cache_stats(request: AdminRequest) -> AdminReply:
        return CacheStatsReply(ok=True, cache=server.context.authenticator.cache_stats())

    async def cache_purge(request: AdminRequest) -> AdminReply:
        name = request.get("flow")
        if name is None:
            if "subject" in request:
                raise CommandError("a subject's entries are purged from one flow's response cache: name the flow")
            server.context.authenticator.purge_cache()
            return AdminReply(ok=True)
        flow = next((f for f in server.context.policy.flows if f.name == name), None)
        if flow is None:
            raise CommandError(f"no flow {name!r}")
        if flow.cache is None:
            raise CommandError(f"flow {name!r} has no response cache")
        return CachePurgeReply(ok=True, flow=name, purged=flow.cache.store.purge(request.get("subject")))

    async def snapshot(request: AdminRequest) -> AdminReply:
        return SnapshotReply(ok=True, snapshot=server.metrics.snapshot())

    def flows_by_name() -> dict[str, Flow]:
        return {flow.name: flow for flow in server.context.policy.flows}

    async def grants_list(request: AdminRequest) -> AdminReply:
        grants = server.grants.listing(OPERATOR, flows_by_name())
        return GrantsReply(ok=True, grants=[grant.as_json() for grant in grants])

    async def grants_decide(request: AdminRequest) -> AdminReply:
        verb = _VERBS[request["cmd"]]
        grant_id = request.get("grant_id") or next(iter(request.get("args", ())), "")
        if not grant_id:
            raise CommandError(f"{request['cmd']} needs a grant id")
        try:
            grant = await server.grants.act(OPERATOR, grant_id, verb, flows_by_name(), None)
        except GrantRefused as refused:
            raise CommandError(f"{refused.code}: {refused.detail}") from None
        return GrantsReply(ok=True, grant=grant.as_json())

    async def grants_hold(request: AdminRequest) -> AdminReply:
        try:
            grant = Grant.from_json(request.get("grant"))
        except ValueError as exc:
            raise CommandError(f"not a grant: {exc}") from None
        server.context.authenticator.grants.hold(grant)
        return GrantsReply(ok=True)

    for name, handler in (
        ("status", status), ("stats", stats), ("flows", flows), ("reload", reload),
        ("drain", drain), ("log-level", log_level), ("metrics", metrics), ("keys", keys),
        ("keys refresh", keys_refresh), ("keys rotate", keys_rotate), ("revoke", revoke), ("cache stats", cache_stats),
        ("cache purge", cache_purge), ("snapshot", snapshot), ("grants list", grants_list),
        ("grants approve", grants_decide), ("grants deny", grants_decide), ("grants revoke", grants_decide),
        ("grants hold", grants_hold),
    ):
        table.register(name, handler)
    return table
