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


class Deadlines:
    """A set of expiring objects swept every ``tick`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        self._loop = loop
        self._tick = tick
        self._watched: set[Expiring] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        #: how late the latest sweep ran: the event loop's current lag, for load shedding
        self.lag = 0.0

    def watch(self, obj: Expiring) -> None:
        self._watched.add(obj)

    def unwatch(self, obj: Expiring) -> None:
        self._watched.discard(obj)

    def start(self) -> None:
        if self._handle is None:
            self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self._tick
        self._handle = self._loop.call_at(self._due, self._sweep)

    def _sweep(self) -> None:
        now = self._loop.time()
        self.lag = max(0.0, now - self._due)
        expired = [obj for obj in self._watched if 0.0 < obj.deadline <= now]
        for obj in expired:
            obj.deadline = 0.0
            obj.on_deadline()
        self._schedule(now)
