"""Coarse deadlines for connections, without a timer per request.

Every object that can time out (a client connection waiting for its head, an upstream
exchange waiting for an answer) carries a ``deadline`` attribute (loop time, or 0.0 for
"none") and an ``on_deadline()`` method. One periodic sweep checks them all. Moving a
deadline is a float assignment, so the per-request hot path creates and cancels no
timer handles; the price is a resolution of one ``tick``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Expiring(Protocol):
    deadline: float

    def on_deadline(self) -> None: ...


class Ticker:
    """One timer that fires every ``interval`` seconds and knows how late each firing was.

    Moving to the next firing is one ``call_at``; subclasses implement ``_tick``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._interval = interval
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self._interval
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        self._tick(now, max(0.0, now - self._due))
        self._schedule(now)

    def _tick(self, now: float, late: float) -> None:
        raise NotImplementedError


class Deadlines(Ticker):
    """A set of expiring objects swept every ``tick`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        super().__init__(loop, tick)
        self._watched: set[Expiring] = set()
        #: how late the latest sweep ran: the event loop's current lag, for load shedding
        self.lag = 0.0

    def watch(self, obj: Expiring) -> None:
        self._watched.add(obj)

    def unwatch(self, obj: Expiring) -> None:
        self._watched.discard(obj)

    def _tick(self, now: float, late: float) -> None:
        self.lag = late
        expired = [obj for obj in self._watched if 0.0 < obj.deadline <= now]
        for obj in expired:
            obj.deadline = 0.0
            obj.on_deadline()
