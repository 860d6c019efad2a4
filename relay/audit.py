"""The audit trail: one JSON line per decision, written before the answer goes out.

A finished exchange is noted as an :class:`ExchangeNote` of its facts, and the notes are turned into
orjson lines in batches, so a request pays for no serialising: the batch runs as one
tight loop, which costs CPython about half what the same work costs spread over
requests. The same notes are then handed to whoever counts requests (the metrics).
With ``chain = true`` each line carries ``prev``, the SHA-256 of the previous line, so
removing, changing, inserting or reordering lines is detectable.

When records are written (``audit.commit``):

``"before-answer"`` (group commit)
    An exchange's answer is produced but held (``Reply.hold``) until its record is
    written. The first record of a loop turn schedules one commit for the turn's end
    (``call_soon``): every pending line goes out in one write (synced first with
    ``fsync = "always"``), then the held answers are released. So every answer a client
    received has its record in the file, whatever happens to relayd after. A streamed
    answer (an upstream's body passed on as it arrives) cannot wait for its end: its
    record is written before its head goes, with the status sent, ``bytes_out`` null
    and ``"streamed": true``; how the stream ended is counted in the metrics.
``"batched"``
    Records are written every ``_FLUSH_INTERVAL`` (sooner past ``_FLUSH_RECORDS``), after
    the answers: cheapest, but a crash loses the last fraction of a second of records.

A write that fails leaves the file and the chain as they were (see ``audit_file``): the
records stay pending and are retried every ``_RETRY`` until the disk takes them, and a
``"reason": "audit_resumed"`` record then says since when they were late and how many
were lost past ``_MAX_PENDING``. Meanwhile, with ``on_failure = "refuse"``, new requests
are refused (503 ``audit_unavailable``, see ``ServerContext.overloaded``) and a held
answer that is not an error is replaced by that 503, its record saying so (``"reason":
"audit_withheld"``); with
``"continue"`` the answers go out and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from relay.audit_file import AuditFile, Repair
from relay.config import AuditConfig
from relay.errors import AuditUnavailable

if TYPE_CHECKING:
    from relay.exchange import Answer
    from relay.identity import Identity

log = logging.getLogger("relay.audit")

_FLUSH_INTERVAL = 0.2
_FLUSH_RECORDS = 2048
#: how often a failed write is tried again
_RETRY = 0.2
#: records kept while they cannot be written; those past it are counted as lost
_MAX_PENDING = 65536
GENESIS = "0" * 64


class ExchangeNote:
    """What the audit log notes of a finished exchange: serialised into its record at
    flush, then counted by the metrics. Made in one place, ``_note``.

    A class with slots, not a NamedTuple: a tuple subclass's fields are read through a
    descriptor the interpreter does not specialise, ≈ 300 instructions a read, and every
    note is read some 25 times.
    """

    __slots__ = ("ts", "request_id", "status", "reason", "flow", "method", "path", "client", "sink", "failed_sink",
                 "bytes_in", "bytes_out", "seconds", "identity", "sink_seconds", "detail", "served")

    def __init__(
        self,
        ts: float,
        request_id: str,
        status: int,
        reason: str,
        flow: str | None,  # None (and method, client, sink): refused before it had a flow
        method: str | None,
        path: str,  # the route path; refused before it had a flow: its raw target's path, cut to 256 bytes
        client: str | None,
        sink: str | None,
        failed_sink: str | None,
        bytes_in: int,
        bytes_out: int,  # -1 for a streamed answer noted as its head goes
        seconds: float,
        identity: Identity | None,
        sink_seconds: float | None,
        detail: str | None,  # why it was refused, in words
        served: tuple[str, int, str] | None,  # the file a files sink answered with: path, size, who sent it
    ) -> None:
        self.ts = ts
        self.request_id = request_id
        self.status = status
        self.reason = reason
        self.flow = flow
        self.method = method
        self.path = path
        self.client = client
        self.sink = sink
        self.failed_sink = failed_sink
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.seconds = seconds
        self.identity = identity
        self.sink_seconds = sink_seconds
        self.detail = detail
        self.served = served


class _Outage:
    """Records cannot be written since ``since``."""

    __slots__ = ("since", "error", "lost")

    def __init__(self, error: OSError) -> None:
        self.since = time.time()
        self.error = error
        self.lost = 0


class AuditLog:
    def __init__(self, config: AuditConfig, loop: asyncio.AbstractEventLoop,
                 on_notes: Callable[[list[ExchangeNote]], None] | None = None) -> None:
        self._chain = config.chain
        self._loop = loop
        #: given each written batch of exchange notes
        self._on_notes = on_notes
        #: answers wait for their records (audit.commit = "before-answer")
        self.holds_answers = config.commit == "before-answer"
        self._refuse = config.on_failure == "refuse"
        #: records not yet written, in order: whole field dicts, or notes of exchanges
        self._pending: list[dict[str, Any] | ExchangeNote] = []
        #: exchanges whose answer waits for a pending record, and that record's number
        self._held: list[tuple[Answer, int]] = []
        #: how many records were written: the number of the first pending one
        self._written = 0
        #: final notes of streamed answers, whose records went with their heads: counted only
        self._uncounted: list[ExchangeNote] = []
        self._prev = GENESIS
        self._timer: asyncio.TimerHandle | None = None
        self._commit: asyncio.Handle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._outage: _Outage | None = None
        #: new requests are refused: records cannot be written and on_failure = "refuse"
        self.refusing = False
        self.write_failures = 0
        self._file = AuditFile(config, loop)
        self._open()

    def _open(self) -> None:
        repair = self._file.open()
        if repair is not None:
            self._repaired(repair)

    def reopen(self) -> None:
        """After the file was rotated away (SIGUSR1): flush, then continue in a fresh file."""
        self.flush()
        if self._file.regular:
            self._file.close()
            try:
                self._open()
            except OSError as exc:
                self._failed(exc)  # the retries open it

    @property
    def pending(self) -> int:
        """Records noted and not yet written."""
        return len(self._pending)

    # --- noting records ------------------------------------------------------------------

    def record(self, fields: dict[str, Any]) -> None:
        self._pending.append(fields)
        self._schedule()

    def record_exchange(self, exchange: Answer, seconds: float) -> bool:
        """Note a finished exchange that took ``seconds`` since its head arrived.

        True when its answer waits for the record: ``exchange.committed()`` follows.
        """
        if exchange.head_noted:
            # a streamed answer, recorded as its head went
            end = _note(exchange, seconds, exchange.reply.bytes_out)
            if exchange.outcome == "relayed":
                self._uncounted.append(end)  # it ended well: only counted
            else:
                # cut short (send_timeout, client_gone, a sink failing mid-answer): a second
                # record, same request_id, says how it ended and how much was sent
                self._pending.append(end)
                self._schedule()
            return exchange.reply.held is not None
        pending = self._pending
        pending.append(_note(exchange, seconds, exchange.reply.bytes_out))
        if self.holds_answers:
            self._held.append((exchange, self._written + len(pending) - 1))
            if self._commit is None:
                self._commit = self._loop.call_soon(self.flush)
            return True
        if len(pending) >= _FLUSH_RECORDS and self._outage is None:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(_FLUSH_INTERVAL, self.flush)
        return False

    def record_stream(self, exchange: Answer) -> None:
        """Note an exchange whose streamed answer is beginning; its head waits for the record."""
        request = exchange.request
        seconds = 0.0 if request is None else time.monotonic() - request.received_at
        self._pending.append(_note(exchange, seconds, -1))
        self._held.append((exchange, self._written + len(self._pending) - 1))
        self._schedule()

    def _schedule(self) -> None:
        if self.holds_answers:
            if self._commit is None:
                self._commit = self._loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = self._loop.call_later(_FLUSH_INTERVAL, self.flush)

    # --- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every pending record now, in one write; then release the answers held for them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._commit is not None:
            self._commit.cancel()
            self._commit = None
        held, self._held = self._held, []
        if self._outage is None:
            self._write()  # else the retry timer tries again
        if self._outage is not None:
            if self._refuse:
                self._withhold(held)
            self._shed_excess()
        for exchange, _ in held:
            exchange.committed()

    def _write(self) -> None:
        uncounted, self._uncounted = self._uncounted, []
        if not self._pending:
            self._count(uncounted)
            return
        data, notes, prev = self._serialise()
        try:
            self._file.append(data)
        except OSError as exc:
            self._failed(exc)
            self._count(uncounted)
            return
        self._written += len(self._pending)
        self._pending = []
        self._prev = prev
        notes += uncounted
        self._count(notes)
        if self._outage is not None:
            self._resumed()

    def _count(self, notes: list[ExchangeNote]) -> None:
        if self._on_notes is not None and notes:
            self._on_notes(notes)

    def _serialise(self) -> tuple[bytes, list[ExchangeNote], str]:
        """The pending records as lines, chained in order; the exchange notes among them to
        count; and the hash of the last line."""
        chain = self._chain
        prev = self._prev
        lines = []
        notes = []
        for item in self._pending:
            if isinstance(item, dict):
                fields = item
            else:
                fields = _exchange_fields(item)
                if item.bytes_out >= 0:  # a streamed answer's head is counted when it ends
                    notes.append(item)
            if chain:
                fields["prev"] = prev
            line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)  # no copy to add it
            if chain:
                prev = hashlib.sha256(line).hexdigest()
            lines.append(line)
        return b"".join(lines), notes, prev

    # --- failures ------------------------------------------------------------------------

    def _failed(self, exc: OSError) -> None:
        self.write_failures += 1
        if self._outage is None:
            self._outage = _Outage(exc)
            self.refusing = self._refuse
            log.error("audit log cannot be written (%s); %d records wait, retried every %g s%s", exc,
                      len(self._pending), _RETRY, "; refusing requests" if self._refuse else "")
        if self._retry is None:
            self._retry = self._loop.call_later(_RETRY, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        if not self._file.is_open:
            try:
                self._open()
            except OSError as exc:
                self._failed(exc)
                return
        self._write()

    def _resumed(self) -> None:
        outage = self._outage
        assert outage is not None
        self._outage = None
        self.refusing = False
        log.warning("audit log written again after %.1f s; %d records lost", time.time() - outage.since,
                    outage.lost)
        self.record({
            "ts": _ms(time.time()), "reason": "audit_resumed", "decision": "audit",
            "failed_since": _ms(outage.since), "error": str(outage.error), "lost": outage.lost,
        })

    def _withhold(self, held: list[tuple[Answer, int]]) -> None:
        """Replace the held answers that are not errors with 503s: their records are not written."""
        pending = self._pending
        for exchange, number in held:
            reply = exchange.reply
            index = number - self._written
            if reply.status < 400 and index >= 0:  # (a record written by a retry meanwhile goes out)
                reply.withdraw(AuditUnavailable("the audit log cannot be written"))
                pending[index] = _withdrawn(pending[index])

    def _shed_excess(self) -> None:
        excess = len(self._pending) - _MAX_PENDING
        if excess > 0:
            del self._pending[_MAX_PENDING:]
            assert self._outage is not None
            self._outage.lost += excess

    # --- start and end -------------------------------------------------------------------

    def _repaired(self, repair: Repair) -> None:
        """Record the torn tail cut at start; the chain goes on from the last whole line."""
        self._prev = repair.last_line or GENESIS
        self.record({
            "ts": _ms(time.time()), "reason": "audit_repaired", "decision": "audit",
            "removed": {"offset": repair.offset, "bytes": repair.size, "sha256": repair.sha256,
                        "kept_in": repair.kept_in},
        })
        self.flush()

    def close(self) -> None:
        self.flush()
        if self._outage is not None:
            self._write()  # a last try
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._pending:
            log.error("audit log closed with %d records it could not write", len(self._pending))
        self._file.close()


def _ms(ts: float) -> float:
    # cut to three decimals with int arithmetic: round(x, 3) formats and re-parses a
    # decimal string, ≈ 0.3 µs a call
    return int(ts * 1000) / 1000


def _note(exchange: Answer, seconds: float, bytes_out: int) -> ExchangeNote:
    # positional: a third of what keywords cost, on every request
    request = exchange.request
    reply = exchange.reply
    if request is None:
        return ExchangeNote(
            time.time(), reply.request_id, reply.status, exchange.outcome, None, None,
            # the path alone: a query may carry credentials (an access_token, a subject_token)
            exchange.raw_target.partition(b"?")[0][:256].decode("latin-1"), None, None, None, 0, 0, seconds, None, None,
            exchange.detail, None,
        )
    flow = request.flow
    return ExchangeNote(
        time.time(), reply.request_id, reply.status, exchange.outcome, flow.name, request.method,
        request.route_path, request.client, flow.sink.name, exchange.failed_sink,
        request.body.consumed, bytes_out, seconds, request.identity, exchange.sink_seconds, exchange.detail,
        request.served,
    )


def _withdrawn(item: dict[str, Any] | ExchangeNote) -> dict[str, Any] | ExchangeNote:
    """The note of an answer replaced by a 503 because its record could not be written."""
    if isinstance(item, dict):
        return item
    return ExchangeNote(item.ts, item.request_id, 503, "audit_withheld", item.flow, item.method, item.path,
                        item.client, item.sink, item.failed_sink, item.bytes_in, 0, item.seconds, item.identity,
                        item.sink_seconds, "its audit record could not be written", None)


def _exchange_fields(note: ExchangeNote) -> dict[str, Any]:
    # read into locals once: each is used again below
    ts, request_id, status, reason, flow = note.ts, note.request_id, note.status, note.reason, note.flow
    bytes_out, identity, detail, served = note.bytes_out, note.identity, note.detail, note.served
    # times are cut to three decimals with int arithmetic: round(x, 3) formats and
    # re-parses a decimal string, ≈ 0.3 µs a call
    if flow is None:
        rejected = {"ts": int(ts * 1000) / 1000, "request_id": request_id, "status": status, "reason": reason,
                    "decision": "reject", "target": note.path}
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
        "method": note.method,
        "path": note.path,
        "client": note.client,
        "sink": note.sink,
        "failed_sink": note.failed_sink,
        "bytes_in": note.bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": int(note.seconds * 1_000_000) / 1000,
    }
    if bytes_out < 0:
        # recorded as the head of a streamed answer went: how much followed is not known yet
        fields["bytes_out"] = None
        fields["streamed"] = True
    if identity is not None:
        # who, never the token itself
        fields["issuer"] = identity.issuer
        fields["subject"] = identity.subject
        fields["jti"] = identity.jti
    if served is not None:
        # the file a files sink answered with: its path beneath the root, its size, and
        # who sent its bytes (lighttpd through X-Sendfile, or relay)
        fields["file"], fields["file_size"], fields["delivery"] = served
    if detail is not None:
        fields["detail"] = detail  # why it was refused, in words (the line of a bad NDJSON body, ...)
    return fields
