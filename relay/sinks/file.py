"""The ``file`` sink: appends each request's body to one local file.

A 2xx means the whole body is in the file as one contiguous run that no other request's
bytes interrupt, within the file's committed length (and on disk when ``fsync =
"always"``). A body is held in memory up to ``STAGE_BYTES``; one that ends there is
appended whole (``relay.sinks._target``), and a small one read whole before its exchange
began is appended from the exchange's callbacks, without a task, when the file is free. A larger one is written once, into the end of the
file as it streams in (``HeldBody``): it holds the file's lock and end until it is complete
and its length committed, while other appends wait; an aborted or failed body is cut off.
A large body that finds the end taken (another large body streaming in, in this process or
another worker) does not wait: it is staged in an unlinked temporary file in the target's
directory and copied in when complete, so no request ever waits for the file while holding
one. So is a body with an ``Idempotency-Key``: it may have to wait for an earlier request
with the same key, which may itself be waiting for the file. A crash mid-append leaves
bytes past the committed length, which the next writer to take the lock moves to
``PATH.torn`` before it appends (``relay.sinks._repair``); relayd does so at start.
A large body's pages leave the page cache once they are on disk (``relay.sinks._writebehind``).

``format = "ndjson"`` checks each line as one JSON value while the body streams in; a
final line without "\\n" gets one; empty lines and lines over ``MAX_RECORD_BYTES`` are
errors (400). ``format = "raw"`` appends the bytes as they come.

Disk errors are ``InsufficientStorage`` (507) for a full disk or quota, ``ServiceUnavailable``
(503) otherwise. Disk work runs in the default executor, except a small append from memory
that can take the lock at once (a page-cache copy, far cheaper than a thread hand-off). With
``fsync = "interval"`` an fsync is due ``fsync_interval`` after the first unsynced append,
run by the shared deadline sweep.

A request with an ``Idempotency-Key`` is held to it as ``relay.idempotency`` says: a retry
of a request accepted in the last ``idempotency_ttl`` gets the first one's receipt and is
not appended again; another request under the same key (and caller) gets 422, and one
while the first is in flight 409. The keys are remembered in memory only
(``RecentReceipts``): the last ``IDEMPOTENCY_KEYS`` of them, per worker process, forgotten
on restart.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.config import FileSinkConfig
from relay.errors import InsufficientStorage, RelayError, ServiceUnavailable
from relay.flowcontrol import NO_BODY
from relay.idempotency import RecentReceipts, Reservation
from relay.reply import Reply
from relay.request import Request
from relay.sinks._staging import MAX_RECORD_BYTES, STAGE_BYTES, NdjsonChecker, Staging, check_whole
from relay.sinks._target import INLINE_BYTES, Target, rotated_name
from relay.sinks.base import ANSWERED, Answered, Receipt, SinkSlots, send_receipt
from relay.timers import Deadlines

__all__ = [
    "FileSink", "IDEMPOTENCY_KEYS", "INLINE_BYTES", "MAX_RECORD_BYTES", "STAGE_BYTES", "WRITE_BYTES", "disk_error",
    "rotated_name",
]

log = logging.getLogger("relay.sinks.file")

#: Idempotency-Keys a file sink remembers (about 0.5 KiB of memory each)
IDEMPOTENCY_KEYS = 10_000
#: bytes of a held body gathered into one write (one more write's worth gathers meanwhile)
WRITE_BYTES = 1024 * 1024
_FULL = frozenset((errno.ENOSPC, errno.EDQUOT))


def disk_error(exc: OSError, sink: str) -> RelayError:
    """The client-facing error for a failed disk operation of ``sink``."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return InsufficientStorage(f"file sink is full: {reason}", sink)
    return ServiceUnavailable(f"file sink cannot write: {reason}", sink)


class FileSink:
    """Appends each request's body to ``config.path`` and answers with a JSON receipt.

    The receipt is ``{"request_id", "bytes", "records" (ndjson only), "sinks": {NAME:
    {"file": basename, "offset": start offset}}}``; ``file`` names the active file the
    body went to (a later rotation renames it). An existing file is repaired when the
    sink starts (if no other worker holds it); a missing one is created by the first request.
    """

    remembers_keys = True

    def __init__(self, config: FileSinkConfig, deadlines: Deadlines) -> None:
        self.name = config.name
        self.slots = SinkSlots(config.name, config.max_in_flight)
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._target = Target(config)
        try:
            # before serving: a restarted relayd never shows what its crash left
            self._target.prepare()
        except OSError as exc:
            log.warning("file sink %s: cannot check %s: %s", self.name, config.path, exc)
        self._directory, self._basename = os.path.split(config.path)
        self._staging_prefix = f".{self._basename}."
        self._lock = asyncio.Lock()  # appends queue here rather than each holding a thread
        self._holding = False  # a HeldBody holds self._lock or is queued for it
        self._closed = False
        #: receipts by Idempotency-Key scope, so a retried request is not appended twice
        self.recent = RecentReceipts(IDEMPOTENCY_KEYS, config.idempotency_ttl)
        #: loop time a periodic fsync is due (fsync = "interval"), 0.0 for none
        self.deadline = 0.0
        #: the periodic fsync in progress, if any
        self.flushing: asyncio.Future[None] | None = None
        if config.fsync == "interval":
            deadlines.watch(self)

    def relay_now(self, request: Request, reply: Reply,
                  on_done: Callable[[BaseException | None], None]) -> Answered | None:
        """A small body read whole, appended and answered at once when no step would wait
        (``Target.try_append``); else None, and the general way stages it."""
        body = request.body
        if body is NO_BODY or self._closed:
            return None
        data = body.peek_whole()
        pieces = [data]
        records = None
        if self.config.format == "ndjson":
            checked = check_whole(data)
            if checked is None:
                return None
            records, newline_due = checked
            if newline_due:
                pieces.append(b"\n")
        try:
            offset = self._target.try_append(pieces, sum(map(len, pieces)))
        except OSError as exc:
            body.take_whole()
            self._loop.call_soon(on_done, self.disk_failure(exc))
            return ANSWERED
        if offset is None:
            return None
        body.take_whole()
        send_receipt(reply, request, {self.name: self.accepted(offset)}, records)
        self._loop.call_soon(on_done, None)
        return ANSWERED

    def open(self, request: Request, answers: bool, reply: Reply | None) -> FileDelivery:
        if self._closed:
            raise ServiceUnavailable("file sink is closed", self.name)
        return FileDelivery(self, request)

    async def append(self, staging: Staging) -> Receipt:
        """Append a staged body as one run; the receipt says where it went."""
        try:
            offset = self._append_now(staging)
            if offset is None:
                async with self._lock:
                    if self._closed:
                        raise ServiceUnavailable("file sink is closed", self.name)
                    # the append we queued behind is done: often no thread is needed now
                    offset = self._append_now(staging)
                    if offset is None:
                        offset = await self._loop.run_in_executor(
                            None, self._target.append, staging.pieces, staging.take_file(), staging.temp_size
                        )
        except OSError as exc:
            raise self.disk_failure(exc) from None
        return self.accepted(offset)

    def hold(self) -> HeldBody | None:
        """A ``HeldBody`` to stream a body into; None while another one holds or awaits the
        file's end (waiting for it could close a cycle: that one may await a file we hold)."""
        if self._holding or self._closed:
            return None
        self._holding = True
        return HeldBody(self._loop, self._target, self._lock, self._let_go)

    def _let_go(self) -> None:
        self._holding = False

    def accepted(self, offset: int) -> Receipt:
        """A body was appended at ``offset``: its receipt (and the periodic fsync is due)."""
        if self.config.fsync == "interval" and not self.deadline:
            self.deadline = self._loop.time() + self.config.fsync_interval
        return {"file": self._basename, "offset": offset}

    def disk_failure(self, exc: OSError) -> RelayError:
        log.warning("file sink %s: %s: %s", self.name, self.config.path, exc)
        return disk_error(exc, self.name)

    def new_staging(self) -> Staging:
        return Staging(self._loop, self._directory, self._staging_prefix)

    def _append_now(self, staging: Staging) -> int | None:
        if staging.temp_fd >= 0:
            return None
        return self._target.try_append(staging.pieces, staging.size)

    def on_deadline(self) -> None:
        """The periodic fsync is due (called by the deadline sweep)."""
        if self.flushing is None or self.flushing.done():
            self.flushing = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._loop.run_in_executor(None, self._target.sync)
        except OSError as exc:
            # nobody waits for this answer and data may be lost: say so loudly
            log.error("file sink %s: fsync of %s failed: %s", self.name, self.config.path, exc)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: fsyncs done and files rotated since the sink started."""
        return {"fsyncs": self._target.fsyncs, "rotations": self._target.rotations}

    async def close(self) -> None:
        """Let in-flight appends finish, sync (unless fsync = "never") and close the file."""
        self._closed = True
        self._deadlines.unwatch(self)
        self.deadline = 0.0
        if self.flushing is not None:
            await asyncio.wait([self.flushing])
        async with self._lock:
            await self._loop.run_in_executor(None, self._target.close)


class HeldBody:
    """One body written into the end of the sink's file as it streams in.

    It holds the sink's lock, and the file's, from ``start`` until ``commit`` or
    ``abort``. One disk write is in flight at a time while the next ``WRITE_BYTES`` gather,
    so the client keeps sending while the disk writes. Every disk step runs in the executor
    and cannot be stopped, so a cancelled request's step runs on and ``abort`` follows it.
    """

    __slots__ = ("_loop", "_target", "_lock", "_on_release", "offset", "_pending", "_pending_size", "_job",
                 "_ending", "_locked", "_released")

    def __init__(self, loop: asyncio.AbstractEventLoop, target: Target, lock: asyncio.Lock,
                 on_release: Callable[[], None]) -> None:
        self._loop = loop
        self._target = target
        self._lock = lock
        self._on_release = on_release
        self.offset = -1
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._job: asyncio.Future[Any] | None = None  # the latest disk step
        self._ending = False  # committed or aborted: nothing more may be done
        self._locked = False  # the sink's lock is ours
        self._released = False  # ... and given back

    async def start(self, length: int | None, pieces: Sequence[bytes]) -> bool:
        """Take the file's end and write ``pieces``; False (nothing done) if that would wait."""
        # behind complete bodies at most, which never wait for a file while holding one
        await self._lock.acquire()
        self._locked = True
        try:
            self.offset = await self._step(self._target.hold, length, pieces)
        except OSError:
            self._end()  # hold() let go of the file itself
            raise
        if self.offset < 0:
            self._end()
            return False
        return True

    async def add(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= WRITE_BYTES:
            await self._write()

    async def commit(self) -> None:
        """The body is complete: write the rest and commit its length (or cut it off)."""
        try:
            if self._pending:
                await self._write()
            if self._job is not None:
                await asyncio.shield(self._job)
            await self._step(self._target.commit_held)
        except BaseException:
            self.abort()
            raise
        self._end()

    def abort(self) -> None:
        """Cut the body off (after the disk step in flight, if any) and let go. Idempotent."""
        if self._ending:
            return
        self._ending = True
        job = self._job
        if job is None or job.done():
            self._drop(job)
        else:
            job.add_done_callback(self._drop)

    async def _write(self) -> None:
        if self._job is not None:
            await asyncio.shield(self._job)  # one write at a time; raises if it failed
        pieces, self._pending, self._pending_size = self._pending, [], 0
        self._job = self._loop.run_in_executor(None, self._target.write_held, pieces)

    async def _step(self, step: Callable[..., Any], *args: Any) -> Any:
        self._job = job = self._loop.run_in_executor(None, step, *args)
        return await asyncio.shield(job)

    def _drop(self, job: asyncio.Future[Any] | None) -> None:
        if job is not None and not job.cancelled():
            job.exception()  # whoever awaited it has been told; nobody else must be
        dropping = self._loop.run_in_executor(None, self._target.drop_held)
        dropping.add_done_callback(self._dropped)

    def _dropped(self, job: asyncio.Future[None]) -> None:
        exc = None if job.cancelled() else job.exception()
        if exc is not None:
            log.error("cannot remove an aborted body from the end of a file: %s", exc)
        self._end()

    def _end(self) -> None:
        self._ending = True
        if not self._released:
            self._released = True
            if self._locked:
                self._lock.release()
            self._on_release()


class FileDelivery:
    """One request's body for ``FileSink``: held in memory, then streamed into the end of
    the file (``HeldBody``) or staged; appended when the body is complete."""

    __slots__ = ("_sink", "_request", "_reservation", "_checker", "_staging", "_held")

    stopped = False  # a file takes the whole body

    def __init__(self, sink: FileSink, request: Request) -> None:
        self._sink = sink
        self._request = request
        claim = request.claim
        self._reservation: Reservation | None = None if claim is None else sink.recent.reserve(claim)  # or 409
        self._checker = NdjsonChecker() if sink.config.format == "ndjson" else None
        self._staging = sink.new_staging()
        self._held: HeldBody | None = None

    async def write(self, data: bytes) -> None:
        if self._checker is not None:
            self._checker.feed(data)
        try:
            held = self._held
            if held is not None:
                await held.add(data)
                return
            staging = self._staging
            if staging.temp_fd < 0 and staging.size + len(data) >= STAGE_BYTES and await self._hold(data):
                return
            await staging.add(data)
        except OSError as exc:
            raise self._sink.disk_failure(exc) from None

    async def _hold(self, data: bytes) -> bool:
        """Stream the body into the end of the file from now on, if that needs no waiting."""
        if self._reservation is not None:
            return False  # a keyed body is staged: a retry of it must write nothing at all
        held = self._sink.hold()
        if held is None:
            return False
        self._held = held
        headers = self._request.headers
        # NDJSON may gain a final newline; unknown length: rotation cannot be decided now
        length = headers.content_length + 1 if headers.content_length >= 0 and not headers.chunked else None
        if await held.start(length, [*self._staging.pieces, data]):
            self._staging.clear()
            return True
        self._held = None
        return False

    async def finish(self) -> Receipt:
        held = self._held
        try:
            if self._checker is not None and self._checker.finish():
                await (held.add(b"\n") if held is not None else self._staging.add(b"\n"))
            if held is not None:
                await held.commit()
                return self._sink.accepted(held.offset)
            if self._reservation is None:
                return await self._sink.append(self._staging)
            return await self._reservation.once(lambda: self._sink.append(self._staging))
        except OSError as exc:
            raise self._sink.disk_failure(exc) from None
        finally:
            self._staging.discard()

    async def answer(self, reply: Reply, receipts: Mapping[str, Receipt]) -> None:
        records = self._checker.records if self._checker is not None else None
        send_receipt(reply, self._request, receipts, records)

    def abort(self) -> None:
        if self._held is not None:
            self._held.abort()
        self._staging.discard()
        if self._reservation is not None:
            self._reservation.release()

