"""What the admin socket's commands do in a running relayd.

``build_commands`` fills a ``CommandTable`` with one handler per command, each reading
or acting on the ``Server``. Commands for parts a build or configuration lacks (keys and
the token cache when no issuer is configured) answer a clear error rather than nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from relay import __version__
from relay.admin import (
    AdminReply,
    AdminRequest,
    CommandError,
    CommandTable,
    FlowsReply,
    LogLevelReply,
    MetricsReply,
    ReloadReply,
    StatsReply,
    StatusReply,
)
from relay.metrics import flow_stats

if TYPE_CHECKING:
    from relay.server import Server

_LEVELS = ("debug", "info", "warning", "error")


def build_commands(server: Server) -> CommandTable:
    table = CommandTable()
    started = time.monotonic()

    async def status(request: AdminRequest) -> AdminReply:
        ctx = server.context
        return StatusReply(
            ok=True, version=__version__, pid=os.getpid(), uptime_s=round(time.monotonic() - started, 3),
            config=server.config.path, policy_version=ctx.policy.version,
            connections=len(ctx.connections), in_flight=ctx.in_flight(), draining=ctx.draining,
        )

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

    for name, handler in (
        ("status", status), ("stats", stats), ("flows", flows), ("reload", reload),
        ("drain", drain), ("log-level", log_level), ("metrics", metrics),
    ):
        table.register(name, handler)
    return table
