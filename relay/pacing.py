"""How slow a client may be: the pace of a request body, and of an answer being taken.

Both are judged by the shared deadline sweep (``relay.timers``), never by a timer of
their own, and neither costs the per-read path anything: a body's bytes are counted by
its ``RequestBody`` anyway, and the sweep compares counts at the end of each window.

``BodyPace`` is the rule for a request on its way in (Apache's mod_reqtimeout MinRate,
and HAProxy's ``timeout http-request`` for the whole of it). Its times are on the
*client's clock*, which stops while relay itself keeps reading paused (a slow sink, a
pipelined request waiting its turn): that time is relay's, not the client's.

``SendWatch`` is nginx's ``send_timeout`` for the way out: a client that takes no byte
of what relay wrote to it for ``send_timeout`` is cut off; one that reads, however
slowly, is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.errors import BodyTimeout


class BodyPace:
    """The arrival of one request body, judged window by window.

    Every window of at least ``window`` seconds of the client's clock must bring
    ``rate`` bytes a second on average, and one byte at least; ``limit`` (0: none) caps the
    whole request from its first byte. ``start`` it when the body starts arriving, then
    ``check`` it when the time it returned has passed.
    """

    __slots__ = ("_rate", "_window", "_limit", "_begun", "_mark", "_mark_bytes")

    def __init__(self) -> None:
        self._rate = 0.0
        self._window = 0.0
        self._limit = 0.0
        self._begun = 0.0
        self._mark = 0.0
        self._mark_bytes = 0

    def start(self, rate: float, window: float, limit: float, begun: float, clock: float, received: int) -> float:
        """Judge a new body, whose request began at ``begun`` (client clock) and of which
        ``received`` bytes are in; returns the seconds until the first ``check``."""
        self._rate = rate
        self._window = window
        self._limit = limit
        self._begun = begun
        self._mark = clock
        self._mark_bytes = received
        return self._next(clock)

    def check(self, clock: float, received: int) -> float:
        """Seconds (of the client's clock) until the next check; raises BodyTimeout when
        the body is too slow or the request too long."""
        if self._limit and clock - self._begun >= self._limit:
            raise BodyTimeout(f"request not received within {self._limit:g}s", "request_timeout")
        elapsed = clock - self._mark
        if elapsed >= self._window:
            got = received - self._mark_bytes
            if got < max(1.0, self._rate * elapsed):
                raise BodyTimeout(f"request body came at {got / elapsed:.0f} bytes/s", "body_too_slow")
            self._mark = clock
            self._mark_bytes = received
        return self._next(clock)

    def _next(self, clock: float) -> float:
        wait = self._mark + self._window - clock
        if self._limit:
            wait = min(wait, self._begun + self._limit - clock)
        return wait


class SendWatch:
    """Cuts a connection off when its client stops taking what relay wrote.

    ``arm`` it when output backs up (the transport paused writing, or relay closes with
    bytes still to go). At each deadline it looks at what is still unsent: all gone, it
    rests; less than last time, the client is reading, and it waits another
    ``timeout``; no less, ``expired`` is called. Watched by the deadline sweep.
    """

    __slots__ = ("deadline", "_transport", "_time", "_expired", "_timeout", "_unsent")

    def __init__(self, transport: asyncio.WriteTransport, time: Callable[[], float],
                 expired: Callable[[], None]) -> None:
        self.deadline = 0.0
        self._transport = transport
        self._time = time
        self._expired = expired
        self._timeout = 0.0
        self._unsent = 0

    def arm(self, timeout: float) -> None:
        self._timeout = timeout
        self._unsent = self._transport.get_write_buffer_size()
        self.deadline = self._time() + timeout

    def on_deadline(self) -> None:
        unsent = self._transport.get_write_buffer_size()
        if not unsent:
            return
        if unsent < self._unsent:
            self._unsent = unsent
            self.deadline = self._time() + self._timeout
            return
        self._expired()
