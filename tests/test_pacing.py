"""How slow a client may be (relay.pacing), and the client's clock (ReadGate): the rules
with plain numbers, the watch and the gate on real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay.errors import BodyTimeout
from relay.flowcontrol import ReadGate
from relay.pacing import BodyPace, SendWatch
from relay.timers import Deadlines


def started(rate: float = 100.0, window: float = 2.0, limit: float = 0.0, begun: float = 0.0,
            clock: float = 0.0, received: int = 0) -> tuple[BodyPace, float]:
    pace = BodyPace()
    return pace, pace.start(rate, window, limit, begun, clock, received)


def reason(pace: BodyPace, clock: float, received: int) -> str:
    with pytest.raises(BodyTimeout) as caught:
        pace.check(clock, received)
    assert caught.value.status == 408 and caught.value.code == "request_timeout"
    return caught.value.reason


def test_a_body_at_the_rate_is_judged_once_a_window() -> None:
    pace, wait = started(rate=100, window=2)
    assert wait == 2
    assert pace.check(2.0, 200) == 2      # 200 bytes in 2 s: exactly the rate
    assert pace.check(4.0, 400) == 2
    assert pace.check(5.0, 400) == 1      # early: the window is not over, nothing judged


def test_a_window_below_the_rate_fails_with_body_too_slow() -> None:
    pace, _ = started(rate=100, window=2)
    assert pace.check(2.0, 1000) == 2     # a fast start buys nothing for the next window
    assert reason(pace, 4.0, 1199) == "body_too_slow"


def test_the_grace_period_is_the_first_window() -> None:
    pace, _ = started(rate=100, window=2, clock=10.0, received=5)
    assert pace.check(11.9, 5) == pytest.approx(0.1)  # nothing came yet, still in grace
    assert reason(pace, 12.0, 204) == "body_too_slow"  # 199 new bytes: one short


def test_a_late_check_judges_the_longer_window_at_the_same_rate() -> None:
    pace, _ = started(rate=100, window=2)
    assert reason(pace, 3.0, 299) == "body_too_slow"
    pace, _ = started(rate=100, window=2)
    assert pace.check(3.0, 300) == 2


def test_a_rate_of_zero_still_needs_one_byte_a_window() -> None:
    pace, _ = started(rate=0, window=2)
    assert pace.check(2.0, 1) == 2
    assert reason(pace, 4.0, 1) == "body_too_slow"


def test_the_whole_request_is_limited_from_its_first_byte() -> None:
    # the head took 1 s of the 5 s the request has, so the first look is at the window's end
    pace, wait = started(rate=10, window=2, limit=5, begun=0.0, clock=1.0)
    assert wait == 2
    assert pace.check(3.0, 10**6) == 2
    assert pace.check(4.5, 10**6) == pytest.approx(0.5)  # the limit comes before the window end
    assert reason(pace, 5.0, 2 * 10**6) == "request_timeout"


class _Quiet(asyncio.Protocol):
    pass


async def connected() -> tuple[asyncio.Transport, socket.socket]:
    """A real stream transport and the peer socket the test reads (or does not read) from."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(_Quiet, ours)
    return transport, theirs


async def wait_until(condition: object, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


def test_the_clients_clock_stops_while_reading_is_paused() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        loop = asyncio.get_running_loop()
        transport, theirs = await connected()
        gate = ReadGate(transport, loop.time)
        try:
            began = loop.time()
            start = gate.client_clock(began)
            gate.pause("body")
            gate.pause("pipeline")
            await asyncio.sleep(0.3)
            during = gate.client_clock(loop.time()) - start
            gate.resume("body")
            await asyncio.sleep(0.1)  # still paused by the other party
            gate.resume("pipeline")
            await asyncio.sleep(0.2)
            now = loop.time()
            return during, gate.client_clock(now) - start, now - began, gate.paused_for
        finally:
            transport.close()
            theirs.close()

    during, after, wall, paused_for = asyncio.run(scenario())
    assert during == pytest.approx(0.0, abs=0.01)  # frozen while paused
    assert 0.4 <= paused_for <= wall - 0.2         # both pauses, as one, and not the time after
    assert after == pytest.approx(wall - paused_for)


def test_the_send_watch_spares_a_slow_reader_and_cuts_off_one_that_stops() -> None:
    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        transport, theirs = await connected()
        deadlines = Deadlines(loop, 0.02)
        cut_at: list[float] = []
        watch = SendWatch(transport, loop.time, lambda: cut_at.append(loop.time()))
        deadlines.watch(watch)
        deadlines.start()
        try:
            transport.write(b"x" * (4 * 1024 * 1024))
            watch.arm(0.5)
            # 1.5 s of slow reading (three timeouts): each look sees the backlog shrink
            end = loop.time() + 1.5
            while loop.time() < end:
                await asyncio.sleep(0.1)
                theirs.recv(16 * 1024)
            spared = not cut_at and transport.get_write_buffer_size() > 0
            stopped = loop.time()
            await wait_until(lambda: cut_at, 5.0)
            return spared, (cut_at[0] - stopped) if cut_at else -1.0
        finally:
            deadlines.stop()
            transport.abort()
            theirs.close()

    spared, cut_after = asyncio.run(scenario())
    assert spared
    assert 0.0 < cut_after < 5.0  # within two timeouts of the last byte taken, on a quiet machine


def test_the_send_watch_rests_once_everything_is_taken() -> None:
    async def scenario() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        transport, theirs = await connected()
        cut_at: list[float] = []
        watch = SendWatch(transport, loop.time, lambda: cut_at.append(loop.time()))
        try:
            transport.write(b"y" * (256 * 1024))
            watch.arm(0.05)
            got = 0
            while got < 256 * 1024:
                got += len(await loop.sock_recv(theirs, 64 * 1024))
            await wait_until(lambda: transport.get_write_buffer_size() == 0, 5.0)
            watch.deadline = 0.0
            watch.on_deadline()
            return cut_at, watch.deadline
        finally:
            transport.close()
            theirs.close()

    cut_at, deadline = asyncio.run(scenario())
    assert cut_at == [] and deadline == 0.0
