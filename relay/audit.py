"""The audit trail: one JSON line per decision.

A finished exchange is noted as a tuple of its facts; the periodic flush (every
``_FLUSH_INTERVAL``, sooner past ``_FLUSH_RECORDS``, and at shutdown) turns the notes into
orjson lines and writes them, so a request never waits on the disk and pays for no
serialising either: the batch runs as one tight loop, which costs CPython about half
what the same work costs spread over requests. The same notes are then handed to whoever
counts requests (the metrics), which so cost the request nothing either. With
``chain = true`` each line carries ``prev``, the SHA-256 of the previous line, so
removing, changing, inserting or reordering lines is detectable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from relay.config import AuditConfig

if TYPE_CHECKING:
    from relay.exchange import Exchange
    from relay.identity import Identity

log = logging.getLogger("relay.audit")

_FLUSH_INTERVAL = 0.2
_FLUSH_RECORDS = 2048
GENESIS = "0" * 64

#: what record_exchange notes of a finished exchange, serialised at flush:
#: (ts, request_id, status, reason, flow, method, path, client, sink, failed_sink,
#:  bytes_in, bytes_out, seconds, identity, sink_seconds, detail). A request refused before it had
#: a flow has flow, method, client and sink None, and its raw target (cut to 256 bytes)
#: as ``path``.
ExchangeNote = tuple[float, str, int, str, "str | None", "str | None", str, "str | None", "str | None",
                     "str | None", int, int, float, "Identity | None", "float | None", "str | None"]


class AuditLog:
    def __init__(self, config: AuditConfig, loop: asyncio.AbstractEventLoop,
                 on_notes: Callable[[list[ExchangeNote]], None] | None = None) -> None:
        self._config = config
        self._chain = config.chain
        self._loop = loop
        #: given each flushed batch of exchange notes, after their lines are made
        self._on_notes = on_notes
        #: records not yet serialised, in order: whole field dicts, or notes of exchanges
        self._pending: list[dict[str, Any] | ExchangeNote] = []
        self._prev = GENESIS
        self._fd = -1
        self._timer: asyncio.TimerHandle | None = None
        self._open()

    def _open(self) -> None:
        if self._config.path == "-":
            self._fd = sys.stdout.fileno()
            return
        os.makedirs(os.path.dirname(self._config.path), exist_ok=True)
        self._fd = os.open(self._config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """After the file was rotated away (SIGUSR1): flush, then continue in a fresh file."""
        self.flush()
        if self._config.path != "-":
            os.close(self._fd)
            self._open()

    def record(self, fields: dict[str, Any]) -> None:
        self._add(fields)

    def record_exchange(self, exchange: Exchange, seconds: float) -> None:
        """Note a finished exchange that took ``seconds`` since its head arrived."""
        request = exchange.request
        reply = exchange.reply
        if request is None:
            self._add((
                time.time(), reply.request_id, reply.status, exchange.outcome, None, None,
                exchange.raw_target[:256].decode("latin-1"), None, None, None, 0, 0, seconds, None, None,
                exchange.detail,
            ))
            return
        flow = request.flow
        self._add((
            time.time(), reply.request_id, reply.status, exchange.outcome, flow.name, request.method,
            request.route_path, request.client, flow.sink.name, exchange.failed_sink,
            request.body.consumed, reply.bytes_out, seconds, request.identity, exchange.sink_seconds,
            exchange.detail,
        ))

    def _add(self, item: dict[str, Any] | ExchangeNote) -> None:
        pending = self._pending
        pending.append(item)
        if len(pending) >= _FLUSH_RECORDS:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(_FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data, notes = self._serialise()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            log.error("audit write failed, %d bytes lost: %s", len(data), exc)
        if self._on_notes is not None and notes:
            self._on_notes(notes)

    def _serialise(self) -> tuple[bytes, list[ExchangeNote]]:
        """The pending records as lines, chained in order; and the exchange notes among them."""
        pending, self._pending = self._pending, []
        chain = self._chain
        prev = self._prev
        lines = []
        notes = []
        for item in pending:
            if isinstance(item, dict):
                fields = item
            else:
                fields = _exchange_fields(item)
                notes.append(item)
            if chain:
                fields["prev"] = prev
            line = orjson.dumps(fields) + b"\n"
            if chain:
                prev = hashlib.sha256(line).hexdigest()
            lines.append(line)
        self._prev = prev
        return b"".join(lines), notes

    def close(self) -> None:
        self.flush()
        if self._config.path != "-" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _exchange_fields(note: ExchangeNote) -> dict[str, Any]:
    (ts, request_id, status, reason, flow, method, path, client, sink, failed_sink,
     bytes_in, bytes_out, seconds, identity, _, detail) = note
    # times are cut to three decimals with int arithmetic: round(x, 3) formats and
    # re-parses a decimal string, ≈ 0.3 µs a call
    if flow is None:
        rejected = {"ts": int(ts * 1000) / 1000, "request_id": request_id, "status": status, "reason": reason,
                    "decision": "reject", "target": path}
        if detail is not None:
            rejected["detail"] = detail
        return rejected
    fields: dict[str, Any] = {
        "ts": int(ts * 1000) / 1000,
        "request_id": request_id,
        "status": status,
        "reason": reason,
        # allow: relayed; deny: the caller may not (401/403); error: anything else
        "decision": "allow" if reason == "relayed" else "deny" if status in (401, 403) else "error",
        "flow": flow,
        "method": method,
        "path": path,
        "client": client,
        "sink": sink,
        "failed_sink": failed_sink,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": int(seconds * 1_000_000) / 1000,
    }
    if identity is not None:
        # who, never the token itself
        fields["issuer"] = identity.issuer
        fields["subject"] = identity.subject
        fields["jti"] = identity.jti
    if detail is not None:
        fields["detail"] = detail  # why it was refused, in words (the line of a bad NDJSON body, ...)
    return fields
