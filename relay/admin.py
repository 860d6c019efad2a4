"""The admin control socket: JSON lines over a private Unix socket.

Protocol: one JSON object per line in, one per line out, in order::

    → {"cmd": "status"}
    ← {"ok": true, "version": "0.1.0", ...}
    → {"cmd": "revoke", "kind": "jti", "value": "abc", "ttl": "1h"}
    ← {"ok": true, ...}
    → {"cmd": "nope"}
    ← {"ok": false, "error": "unknown command 'nope' (known: status, stats, ...)"}

A malformed line gets an error reply and the connection stays usable; a line over
``max_line`` bytes gets an error and the connection is closed. The socket file is created
mode 0600 and every peer's uid is checked with SO_PEERCRED: root, the daemon's own uid
and ``allowed_uids`` may talk, anyone else gets one ``permission denied`` line.

:class:`AdminServer` only frames and checks; what a command does is the ``dispatch``
callable's business, usually a :class:`CommandTable` the server fills with handlers.
Each connection is its own task, so a slow or stuck admin client delays nobody else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Required, TypedDict, cast, get_origin, get_type_hints

import orjson

from relay.metrics import Snapshot
from relay.unixsock import bind_unix_socket

__all__ = [
    "COMMANDS", "MAX_LINE", "AdminReply", "AdminRequest", "AdminServer", "CachePurgeReply", "CacheStatsReply",
    "CommandError", "CommandTable", "FlowsReply", "GrantsReply", "Handler", "KeysReply", "LogLevelReply", "MetricsReply",
    "ReloadReply", "RevokeReply", "SnapshotReply", "StatsReply", "StatusReply", "ask",
]

log = logging.getLogger("relay.admin")

MAX_LINE = 64 * 1024
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ASK_TIMEOUT = 10.0

#: every command relayd answers; two-word ones may also arrive as {"cmd": "keys", "args": ["refresh"]}
COMMANDS: tuple[str, ...] = (
    "status", "stats", "flows", "reload", "keys", "keys refresh", "keys rotate", "revoke",
    "cache stats", "cache purge", "drain", "log-level", "metrics",
    "snapshot",  # the metrics as JSON: a supervisor merges its workers', relayctl top diffs them
    "grants list", "grants approve", "grants deny", "grants revoke",
    "grants put",  # a worker to its supervisor: make this grant change (relay.grants.store)
    "grants hold",  # a supervisor to its workers: hold this grant change
)


class AdminRequest(TypedDict, total=False):
    """One request line. Fields other than these are refused, so a typo never goes unnoticed."""

    cmd: Required[str]
    args: list[str]  # words after the command: ["refresh"] for "keys refresh"
    kind: str  # revoke: "jti", "sub" or "kid"
    value: str  # revoke: the jti, subject or kid
    ttl: str  # revoke: how long, as a duration ("1h")
    level: str  # log-level: "debug", "info", "warning" or "error"
    grant_id: str  # grants approve/deny/revoke: which grant
    grant: dict[str, object]  # grants put/hold: the grant as relay.grants.model.Grant.as_json writes it
    now: bool  # keys rotate: the new key signs at once, not once it has been published for the lead
    flow: str  # cache purge: the flow whose response cache to empty (without it: the token cache)
    subject: str  # cache purge with a flow: only the entries this subject's requests stored


class AdminReply(TypedDict, total=False):
    """Every reply: ``ok``, an ``error`` when not ok, and the command's own fields."""

    ok: Required[bool]
    error: str


class StatusReply(AdminReply, total=False):
    version: str
    pid: int
    uptime_s: float
    config: str
    policy_version: int
    connections: int
    in_flight: int
    draining: bool
    workers: Sequence[Mapping[str, object]]  # with workers > 1: id, pid, restarts of each
    shared: Mapping[str, object]  # with [shared] redis: in_sync, since, disconnects


class FlowsReply(AdminReply, total=False):
    flows: Sequence[Mapping[str, object]]  # name, path, methods, auth, sink, tee, ...


class StatsReply(AdminReply, total=False):
    flows: Sequence[Mapping[str, object]]  # relay.metrics.FlowStats rows


class KeysReply(AdminReply, total=False):
    keys: Sequence[Mapping[str, object]]  # one row per issuer: issuer, source, kids, fetches, ...
    own: Sequence[Mapping[str, object]]  # relay's signing keys: kid, alg, state, created, activates, ...
    rotated: str  # keys rotate: the new key's kid


class CacheStatsReply(AdminReply, total=False):
    cache: Mapping[str, int]  # size, capacity, hits, misses, evictions, ...


class CachePurgeReply(AdminReply, total=False):
    flow: str  # with a flow: the flow whose response cache was purged
    purged: int  # entries dropped (summed over workers)


class ReloadReply(AdminReply, total=False):
    policy_version: int
    problems: list[str]  # with ok false: every problem of the rejected file


class RevokeReply(AdminReply, total=False):
    kind: str
    value: str
    until: float  # wall-clock time the revocation lapses
    workers: Sequence[Mapping[str, object]]  # with workers > 1: id, pid and state ("revoked") of each


class GrantsReply(AdminReply, total=False):
    grants: Sequence[Mapping[str, object]]  # grants list: every grant held
    grant: Mapping[str, object]  # grants approve/deny/revoke: the grant after
    applied: bool  # grants put: the change was made (False: a later state was held already)


class LogLevelReply(AdminReply, total=False):
    level: str


class MetricsReply(AdminReply, total=False):
    text: str  # the Prometheus text exposition


class SnapshotReply(AdminReply, total=False):
    snapshot: Snapshot  # relay.metrics' counters, JSON-able, for merging across workers


#: answers one request; the AdminServer's ``dispatch`` and every CommandTable entry
Handler = Callable[[AdminRequest], Awaitable[AdminReply]]


class CommandError(Exception):
    """Raised by a handler to answer ``{"ok": false, "error": str(exc)}`` (a refusal, not a bug)."""


_KINDS: dict[type, str] = {list: "a list of strings", dict: "an object"}
# the request fields and the Python type each must have, taken from AdminRequest itself
_FIELDS: dict[str, type] = {name: get_origin(t) or t for name, t in get_type_hints(AdminRequest).items()}


def _parse(line: bytes) -> AdminRequest:
    """Validate one request line; raises CommandError saying what is wrong with it."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError("a request must be a JSON object")
    if "cmd" not in data:
        raise CommandError("missing 'cmd'")
    for name, value in data.items():
        expected = _FIELDS.get(name)
        if expected is None:
            raise CommandError(f"unknown field {name!r}")
        if not isinstance(value, expected):
            raise CommandError(f"{name!r} must be {_KINDS.get(expected, 'a string')}")
    if not all(isinstance(arg, str) for arg in data.get("args", ())):
        raise CommandError("'args' must be a list of strings")
    return cast(AdminRequest, data)


class CommandTable:
    """Maps command names to handlers; answers unknown and unavailable commands itself.

    Call it as the ``dispatch`` of an :class:`AdminServer`. A handler receives the request
    with ``cmd`` canonical (``"keys refresh"`` whichever way it was sent) and ``args``
    holding only the words after the command.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Install the handler for ``name``, one of :data:`COMMANDS` (else ValueError)."""
        if name not in COMMANDS:
            raise ValueError(f"{name!r} is not an admin command (known: {', '.join(COMMANDS)})")
        self._handlers[name] = handler

    async def __call__(self, request: AdminRequest) -> AdminReply:
        words = [*request["cmd"].split(), *request.get("args", ())]
        name = " ".join(words[:2])
        if name not in COMMANDS:
            name = " ".join(words[:1])
        handler = self._handlers.get(name)
        if handler is None:
            if name in COMMANDS:
                return AdminReply(ok=False, error=f"command {name!r} is not available")
            return AdminReply(ok=False, error=f"unknown command {request['cmd']!r} (known: {', '.join(COMMANDS)})")
        canonical: AdminRequest = {**request, "cmd": name, "args": words[len(name.split()):]}
        return await handler(canonical)


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    """The connected peer's (pid, uid), from the kernel."""
    sock = writer.get_extra_info("socket")
    pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def _encode(reply: Mapping[str, Any]) -> bytes:
    return orjson.dumps(reply, option=orjson.OPT_APPEND_NEWLINE)


async def ask(path: str, request: Mapping[str, object], timeout: float = _ASK_TIMEOUT) -> dict[str, object]:
    """One request to an admin socket and its reply."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))
            line = await reader.readline()
        finally:
            writer.close()
    reply = orjson.loads(line)
    if not isinstance(reply, dict):
        raise ValueError(f"{path}: not a reply: {line[:80]!r}")
    return reply


class AdminServer:
    """Serves the admin protocol on ``path`` until :meth:`close`."""

    def __init__(self, path: str, allowed_uids: frozenset[int], dispatch: Handler,
                 max_line: int = MAX_LINE) -> None:
        self._path = path
        self._allowed = allowed_uids | {0, os.geteuid()}
        self._dispatch = dispatch
        self._max_line = max_line
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        """Bind and listen; raises StartupError when the path cannot be used."""
        sock = bind_unix_socket(self._path, 0o600)
        self._inode = os.stat(self._path).st_ino
        # limit: readline() refuses a line longer than this instead of buffering it
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=self._max_line)
        log.info("admin socket on %s", self._path)

    async def close(self) -> None:
        """Stop listening, end every admin connection (a running command is cancelled), remove the file."""
        if self._server is None:
            return
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        try:
            # only our own file: a newer daemon may already have put its socket here
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            pid, uid = _peer(writer)
            if uid not in self._allowed:
                log.warning("admin connection refused: uid %d (pid %d) is not allowed", uid, pid)
                writer.write(_encode(AdminReply(ok=False, error="permission denied")))
                await writer.drain()
                return
            await self._converse(reader, writer, uid)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except asyncio.CancelledError:
            # close() ends the connection (after a drain, say): a normal end. Left to
            # propagate, the stream server (Python 3.11) logs the cancelled task as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than the limit; what is left of it cannot be framed
                writer.write(_encode(AdminReply(ok=False, error=f"request line longer than {self._max_line} bytes")))
                await writer.drain()
                return
            if not line:
                return
            if line.strip():
                writer.write(await self._answer(line, uid))
                await writer.drain()

    async def _answer(self, line: bytes, uid: int) -> bytes:
        try:
            request = _parse(line)
            log.debug("admin command %r from uid %d", request["cmd"], uid)
            return _encode(await self._dispatch(request))
        except CommandError as exc:
            return _encode(AdminReply(ok=False, error=str(exc)))
        except Exception:
            log.exception("admin command failed: %r", line[:200])
            return _encode(AdminReply(ok=False, error="internal error"))
