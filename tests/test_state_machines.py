"""The state machines of the request path change state in one place each, along the
transitions their tables allow: a reply never sends a second answer, an upstream
connection carries one exchange at a time and nothing once closed, an answer is claimed
once, and a client connection parses nothing once it is dead or lingering. Driven over
real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from relay import protocol
from relay.config import HttpSinkConfig
from relay.errors import ServiceUnavailable
from relay.reply import ABORTED, DONE, NOT_STARTED, Reply
from relay.sinks.upstream import UpstreamConnection, UpstreamPool
from relay.timers import Deadlines

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def client_side() -> AsyncIterator[tuple[asyncio.Transport, socket.socket]]:
    """A transport writing into one end of a socket pair, and the other end to read."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    theirs.setblocking(False)
    try:
        yield transport, theirs
    finally:
        transport.close()
        theirs.close()


def received(sock: socket.socket) -> bytes:
    """What the transport wrote: it writes to an empty socket buffer at once, within the call."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def reply(transport: asyncio.Transport) -> Reply:
    return Reply(transport, "r-1", head_only=False, http10=False, keep_alive=True, client_paused=False)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


# -- Reply -----------------------------------------------------------------------------------


def test_a_reply_never_sends_a_second_answer() -> None:
    async def main() -> None:
        async with client_side() as (transport, peer):
            answer = reply(transport)
            answer.send_whole(200, b"", (b"ok",), 2)
            assert (answer.state, answer.started) == (DONE, True)
            first = received(peer)
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\nok")
            with pytest.raises(AssertionError, match="DONE -> DONE"):
                answer.send_whole(200, b"", (b"again",), 5)
            with pytest.raises(AssertionError, match="DONE -> STREAMING"):
                answer.begin(200, b"")
            answer.fail(ServiceUnavailable("late"))  # too late to answer: no transition, nothing sent
            assert answer.state == DONE and received(peer) == b""

    run(main)


def test_an_aborted_reply_sends_nothing_more() -> None:
    async def main() -> None:
        async with client_side() as (transport, _):
            answer = reply(transport)
            answer.begin(200, b"")
            answer.abort()
            assert answer.state == ABORTED
            with pytest.raises(AssertionError, match="ABORTED -> DONE"):
                answer.send_whole(200, b"", (), 0)

    run(main)


def test_a_withdrawn_answer_starts_over_as_the_error() -> None:
    async def main() -> None:
        async with client_side() as (transport, peer):
            answer = reply(transport)
            answer.hold(None)
            answer.send_whole(200, b"", (b"ok",), 2)
            assert answer.state == DONE and received(peer) == b""  # held
            answer.withdraw(ServiceUnavailable("the audit log cannot be written"))
            assert (answer.state, answer.status, answer.keep_alive) == (DONE, 503, False)
            answer.release()
            sent = received(peer)
            assert sent.startswith(b"HTTP/1.1 503 ") and sent.count(b"HTTP/1.1 ") == 1

    run(main)


def test_a_new_reply_has_sent_nothing() -> None:
    async def main() -> None:
        async with client_side() as (transport, _):
            answer = reply(transport)
            assert (answer.state, answer.started) == (NOT_STARTED, False)

    run(main)


# -- UpstreamConnection -------------------------------------------------------------------------


@asynccontextmanager
async def upstream() -> AsyncIterator[UpstreamPool]:
    """A pool to a loopback server that answers every request head with ``ANSWER``."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(ANSWER)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(HttpSinkConfig("up", f"http://127.0.0.1:{port}", "127.0.0.1", port, ""), Deadlines(loop))
    try:
        yield pool
    finally:
        await pool.close()
        server.close()


async def exchange(conn: UpstreamConnection, answer: Reply) -> None:
    done = asyncio.get_running_loop().create_future()
    conn.begin([b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"], head_only=False, body_sent=True)
    conn.pass_on(answer, done.set_result)
    assert await done is None


def test_an_upstream_connection_carries_one_exchange_at_a_time() -> None:
    async def main() -> None:
        async with upstream() as pool, client_side() as (transport, _):
            conn = await pool.connect()
            await exchange(conn, reply(transport))
            conn.begin([b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"], head_only=False, body_sent=True)
            with pytest.raises(AssertionError, match="EXCHANGE -> EXCHANGE"):
                conn.begin([b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"], head_only=False, body_sent=True)

    run(main)


def test_an_answer_is_claimed_once() -> None:
    async def main() -> None:
        async with upstream() as pool, client_side() as (transport, _):
            conn = await pool.connect()
            conn.begin([b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"], head_only=False, body_sent=True)
            conn.pass_on(reply(transport), lambda failure: None)
            with pytest.raises(AssertionError, match="claimed twice"):
                conn.discard()

    run(main)


def test_a_closed_upstream_connection_carries_nothing() -> None:
    async def main() -> None:
        async with upstream() as pool:
            conn = await pool.connect()
            conn.close()
            with pytest.raises(AssertionError, match="CLOSED -> EXCHANGE"):
                conn.begin([b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"], head_only=False, body_sent=True)

    run(main)


# -- ClientConnection ---------------------------------------------------------------------------


def test_a_dead_or_lingering_client_connection_parses_nothing_again() -> None:
    parsing = {protocol.IDLE, protocol.HEAD, protocol.BODY}
    for state in (protocol.DEAD, protocol.LINGER):
        assert protocol._NEXT[state] and not protocol._NEXT[state] & parsing
    # and every state can end
    assert all(protocol.DEAD in allowed and protocol.LINGER in allowed for allowed in protocol._NEXT)
