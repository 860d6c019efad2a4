"""The file sink driven through its delivery (open, write, finish, answer) with real files
and real sockets, as ``Exchange`` drives it.

Each exchange runs on a real socket pair: the test writes the request body into one end,
a small protocol on the other feeds it to a ``RequestBody`` (with the real ``ReadGate``
back-pressure) and the ``Reply`` writes the answer back through the same connection, which
the test reads to its end. Where read boundaries must be exact (the NDJSON split tests) the
body is fed to ``RequestBody`` piece by piece and only the answer crosses a socket.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
import uvloop

from relay.config import FileSinkConfig
from relay.errors import RelayError
from relay.fastpath import HeaderRules, scan_headers
from relay.flowcontrol import ClientGone, ReadGate, RequestBody
from relay.idempotency import Claim
from relay.reply import Reply
from relay.request import Request
from relay.sinks._repair import COMMITTED
from relay.sinks.file import FileSink
from relay.timers import Deadlines

T = TypeVar("T")
MiB = 1024 * 1024
NO_LIMIT = 1 << 40
_ids = itertools.count()


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a fresh uvloop loop (relayd's loop); the default executor is joined on exit."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def make_sink(path: Path, **options: Any) -> FileSink:
    options.setdefault("fsync", "never")
    config = FileSinkConfig(name="archive", path=str(path), **options)
    return FileSink(config, Deadlines(asyncio.get_running_loop()))


@dataclass
class Result:
    status: int = 0  # 0: no answer reached the client
    headers: dict[bytes, bytes] = field(default_factory=dict)
    receipt: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None  # what the delivery raised


class _RelaySide(asyncio.Protocol):
    """relayd's end of a test connection: everything received is the body of one request."""

    def __init__(self, length: int, max_bytes: int) -> None:
        self._length = length
        self._max_bytes = max_bytes
        self.body: RequestBody | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.body = RequestBody(ReadGate(transport, asyncio.get_running_loop().time), self._max_bytes,
                                complete=self._length == 0)

    def data_received(self, data: bytes) -> None:
        assert self.body is not None
        try:
            self.body.feed(data)
        except RelayError as err:
            self.body.fail(err)
            return
        if self.body.received >= self._length:
            self.body.feed_eof()

    def eof_received(self) -> bool:
        assert self.body is not None
        self.body.fail(ClientGone())  # a no-op once the body is complete
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.body is not None
        self.body.fail(ClientGone())


@dataclass(frozen=True)
class _Flow:
    name: str = "archive"  # what idempotency keys are scoped by


def make_request(body: RequestBody, length: int, key: bytes | None = None, chunked: bool = False) -> Request:
    """The request the sink sees: ``length`` announced (or ``chunked``), an Idempotency-Key if given."""
    rid = f"req-{next(_ids)}"
    framing = (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % length)
    pairs = [(b"host", b"relay.test"), framing]
    if key is not None:
        pairs.append((b"idempotency-key", key))
    headers = scan_headers(pairs, HeaderRules((), (), underscores=False))
    loop = asyncio.get_running_loop()
    request = Request(rid, "POST", "1.1", "/archive", b"/archive", headers, cast(Any, _Flow()), "127.0.0.1",
                      body, False, loop.time())
    if key is not None:
        request.claim = Claim(request, key)  # as the exchange makes it for a sink that keeps keys
    return request


async def _serve(sink: FileSink, request: Request, transport: asyncio.BaseTransport, result: Result) -> None:
    """What ``Exchange`` does for a flow's only sink, turning a RelayError into the answer."""
    reply = Reply(cast(asyncio.WriteTransport, transport), request.request_id, head_only=False, http10=False,
                  keep_alive=False, client_paused=False)
    try:
        delivery = sink.open(request, True, reply)
        try:
            while data := await request.body.read():
                await delivery.write(data)
            receipts = {sink.name: await delivery.finish()}
        except BaseException:
            delivery.abort()
            raise
        await delivery.answer(reply, receipts)
    except RelayError as err:
        result.error = err
        reply.fail(err)
    except ClientGone as exc:
        result.error = exc
    finally:
        transport.close()


async def _read_answer(sock: socket.socket, result: Result) -> None:
    loop = asyncio.get_running_loop()
    raw = bytearray()
    try:
        while data := await loop.sock_recv(sock, 65536):
            raw += data
    except ConnectionResetError:
        pass  # relay closed with part of the body unread: what it answered came first
    sock.close()
    if not raw:
        return
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    result.status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        result.headers[name.strip().lower()] = value.strip()
    assert int(result.headers[b"content-length"]) == len(body)
    result.receipt = orjson.loads(body)


async def post(
    sink: FileSink, pieces: Iterable[bytes] | AsyncIterable[bytes], length: int, max_bytes: int = NO_LIMIT,
    hang_up: bool = False, key: bytes | None = None, chunked: bool = False,
) -> Result:
    """Send ``pieces`` (``length`` bytes announced) through a socket pair to ``sink``.

    ``hang_up`` closes the client's end once the pieces are sent, as a client that goes away.
    ``key`` is sent as the Idempotency-Key; ``chunked``: the length is not announced (the
    sink is told the body is chunked; its bytes arrive as they are).
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport, side = await loop.connect_accepted_socket(lambda: _RelaySide(length, max_bytes), theirs)
    assert side.body is not None
    result = Result()

    async def send() -> None:
        try:
            if isinstance(pieces, AsyncIterable):
                async for piece in pieces:
                    await loop.sock_sendall(ours, piece)
            else:
                for piece in pieces:
                    await loop.sock_sendall(ours, piece)
        except OSError:
            return  # relay answered early and closed
        if hang_up:
            ours.close()

    reading = loop.create_task(_read_answer(ours, result)) if not hang_up else None
    await asyncio.gather(send(), _serve(sink, make_request(side.body, length, key, chunked), transport, result))
    if reading is not None:
        await reading
    return result


async def post_pieces(sink: FileSink, pieces: list[bytes]) -> Result:
    """Deliver ``pieces`` to the sink as exactly these reads; the answer crosses a socket."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, theirs)
    body = RequestBody(None, NO_LIMIT, complete=False)
    for piece in pieces:
        body.feed(piece)
    body.feed_eof()
    result = Result()
    await asyncio.gather(
        _serve(sink, make_request(body, sum(map(len, pieces))), transport, result), _read_answer(ours, result)
    )
    return result


def ndjson(records: Iterable[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def committed(path: Path) -> int | None:
    """The file's committed length, as relay recorded it."""
    try:
        return int(os.getxattr(path, COMMITTED))
    except OSError:
        return None


def names_in_dir(path: Path) -> list[str]:
    """Every name in the sink's directory (temporary staging files would show here)."""
    return sorted(os.listdir(path.parent))
