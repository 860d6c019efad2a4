"""A minimal Redis connection for the redis-stream sink: RESP over one asyncio protocol.

Why not redis-py: its asyncio client spends ≈ 170 µs of CPU per command here (a pooled
connection taken and given back, locks, a timer, packing and parsing in Python), more
than all the rest of relay's work on a request. The sink needs one thing of Redis, to
run one script at a time, so it talks RESP itself: hiredis (the C library Redis ships,
through its Python binding) packs each command and parses the answers, and commands are
pipelined on one connection, their answers matched to them in order. A batch of requests
then costs one write, one read and a few µs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

__all__ = ["LARGE", "RedisAddress", "RedisConnection", "ReplyError", "connect", "pack", "pack_large"]

#: an error Redis answered (hiredis returns it as a value; it is never raised)
ReplyError = hiredis.ReplyError


C = TypeVar("C", bound="RedisConnection")

#: arguments from this size on are sent as they are by ``pack_large``
LARGE = 64 * 1024

Part = str | int | float | bytes


def pack(*parts: Part) -> bytes:
    """One command in RESP, packed by hiredis in C."""
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]  # its stub says a 1-tuple
    return packed


def pack_large(parts: tuple[Part, ...]) -> list[bytes]:
    """``pack``, as buffers for one write, each argument of ``LARGE`` bytes or more passed
    through uncopied (hiredis copies an argument several times: ≈ 0.15 s for 64 MiB)."""
    buffers = [b"*%d\r\n" % len(parts)]
    small = 0  # the first of the small arguments not yet packed
    for i, part in enumerate(parts):
        if isinstance(part, bytes) and len(part) >= LARGE:
            if small < i:
                buffers.append(_bulks(parts[small:i]))
            buffers += (b"$%d\r\n" % len(part), part, b"\r\n")
            small = i + 1
    if small < len(parts):
        buffers.append(_bulks(parts[small:]))
    return buffers


def _bulks(parts: tuple[Part, ...]) -> bytes:
    """``parts`` packed as RESP bulk strings, without the array header."""
    packed = pack(*parts)
    return packed[packed.index(b"\r\n") + 2:]


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a Redis is and how to log in: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``
    or ``unix://[[USER]:PASSWORD@]/PATH[?db=DB]``."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        password = unquote(parts.password) if parts.password is not None else None
        username = unquote(parts.username) if parts.username else None
        if parts.scheme == "unix":
            db = parse_qs(parts.query).get("db", ["0"])[0]
            return cls(path=parts.path, db=int(db), username=username, password=password)
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                   db=int(parts.path.strip("/") or 0), username=username, password=password)


class RedisConnection(asyncio.Protocol):
    """One connection; ``call`` writes commands and returns a future for each answer.

    When the connection is lost every unanswered call fails with ``ConnectionError``.
    """

    def __init__(self) -> None:
        # made by the loop's connection factory; kept, since CPython 3.11 asks the OS for
        # its pid on every asyncio.get_running_loop()
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        #: commands of ``call_soon`` not yet written
        self._corked: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (answer := self._reader.gets()) is not False:
                if self.pushed(answer):
                    continue
                waiter = self._waiting.popleft()
                if not waiter.done():  # its caller may have given up
                    waiter.set_result(answer)
        except (hiredis.ProtocolError, IndexError):
            # garbage, or an answer to nothing: nothing more on this connection can be trusted
            self.close()

    def pushed(self, answer: Any) -> bool:
        """Whether ``answer`` is a message Redis sent unasked (none here: see ``relay.shared``)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def call(self, *commands: bytes | list[bytes]) -> list[asyncio.Future[Any]]:
        """Send ``commands`` (each made by ``pack`` or ``pack_large``) in one write."""
        if self.closed or self._transport is None:
            raise ConnectionError("connection to Redis is closed")
        if self._corked:
            self._uncork()  # written before these, as their answers are awaited first
        loop = self._loop
        waiters = [loop.create_future() for _ in commands]
        self._waiting.extend(waiters)
        if len(commands) == 1 and isinstance(commands[0], bytes):
            self._transport.write(commands[0])
        else:
            self._transport.writelines([buffer for command in commands
                                        for buffer in ((command,) if isinstance(command, bytes) else command)])
        return waiters

    def call_soon(self, command: bytes) -> asyncio.Future[Any]:
        """``call`` for one command, written together with every other one made in the same
        turn of the event loop: many requests' commands, one write (one system call)."""
        if self.closed or self._transport is None:
            raise ConnectionError("connection to Redis is closed")
        loop = asyncio.get_running_loop()
        if not self._corked:
            loop.call_soon(self._uncork)
        self._corked.append(command)
        waiter = loop.create_future()
        self._waiting.append(waiter)
        return waiter

    def _uncork(self) -> None:
        corked, self._corked = self._corked, []
        if corked and not self.closed and self._transport is not None:
            self._transport.writelines(corked)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


async def connect(address: RedisAddress, protocol: Callable[[], C] = RedisConnection) -> C:  # type: ignore[assignment]
    """A connection to ``address``, logged in and on its database (the caller bounds the time).
    ``protocol`` makes a subclass, e.g. one that also takes pub/sub messages."""
    loop = asyncio.get_running_loop()
    connection: C
    if address.path is not None:
        _, connection = await loop.create_unix_connection(protocol, address.path)
    else:
        _, connection = await loop.create_connection(protocol, address.host, address.port)
    try:
        setup = []
        if address.password is not None:
            login = (address.username, address.password) if address.username else (address.password,)
            setup.append(pack("AUTH", *login))
        if address.db:
            setup.append(pack("SELECT", address.db))
        answers = await asyncio.gather(*connection.call(*setup)) if setup else []
        for answer in answers:
            if isinstance(answer, ReplyError):
                raise ConnectionError(f"Redis refused the login: {answer}")
    except BaseException:
        connection.close()
        raise
    return connection
