"""Where a process makes a grant change: the one writer every holder of grants follows.

``propose(grant)`` asks for ``grant`` (a grant in a later state than the one held) to
become the truth, and answers whether it did: False means a change of the same or a
later state won first (another approver, another worker's expiry), and the caller
reports a conflict instead of auditing a change that did not happen. A change is
durable before ``propose`` returns True.

- :class:`LocalStore`: relayd alone keeps the book and ``state_dir/grants.json``.
- :class:`SupervisedStore`: a worker of ``server.workers > 1`` asks its supervisor,
  which saves the file and has every worker hold the change before it answers.
- :class:`SharedStore`: with ``[shared] redis`` Redis decides (a conditional write,
  published to every instance); the winner holds and saves it here too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from relay.admin import ask
from relay.errors import ServiceUnavailable
from relay.grants.file import GrantFile, documents
from relay.grants.model import Grant, GrantBook
from relay.grants.shared import TABLE, entry_of
from relay.shared import SharedState

__all__ = ["GrantStore", "GrantsUnavailable", "LocalStore", "SharedStore", "SupervisedStore", "save_grants"]


_SUPERVISOR_STARTING = 5.0


class GrantsUnavailable(ServiceUnavailable):
    """503: the change cannot be made durable or shared now; nothing changed."""

    code = "grants_unavailable"
    explained = True


class GrantStore(Protocol):
    async def propose(self, grant: Grant) -> bool: ...


async def save_grants(file: GrantFile, book: GrantBook) -> None:
    """Write what ``book`` holds to ``file``. Raises OSError."""
    await file.save(lambda: documents(book.grants(time.time())))


class LocalStore:
    """The book and its file in this process; changes are taken one at a time."""

    def __init__(self, book: GrantBook, file: GrantFile) -> None:
        self.book = book
        self.file = file
        self._turn = asyncio.Lock()

    async def propose(self, grant: Grant) -> bool:
        async with self._turn:
            held = self.book.get(grant.id)
            if held is not None and held.rank >= grant.rank:
                return False
            try:
                await self.file.save(lambda: documents([*(g for g in self.book.grants(time.time())
                                                          if g.id != grant.id), grant]))
            except OSError as exc:
                raise GrantsUnavailable(f"the grant could not be saved ({self.file.path}: "
                                        f"{exc.strerror or exc})") from None  # fmt: skip
            return self.book.hold(grant)


class SupervisedStore:
    """A worker's way: the supervisor decides, saves, and tells every worker."""

    def __init__(self, supervisor_admin: str) -> None:
        self._admin = supervisor_admin

    async def propose(self, grant: Grant) -> bool:
        # the supervisor opens its admin socket once every worker is up, a moment after they serve
        deadline = time.monotonic() + _SUPERVISOR_STARTING
        while True:
            try:
                reply = await ask(self._admin, {"cmd": "grants put", "grant": grant.as_json()})
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    raise GrantsUnavailable(f"the supervisor's admin socket is not up ({exc})") from None
                await asyncio.sleep(0.05)  # a retry's pace while it starts, not a wait for an event
            except (OSError, TimeoutError, ValueError) as exc:
                raise GrantsUnavailable(f"the supervisor did not answer ({exc or type(exc).__name__})") from None
        if not reply.get("ok"):
            raise GrantsUnavailable(f"the supervisor refused the change: {reply.get('error')}")
        return reply.get("applied") is True


class SharedStore:
    """Redis decides which change wins; this instance then holds and saves it."""

    def __init__(self, shared: SharedState, local: LocalStore) -> None:
        self._shared = shared
        self._local = local

    async def propose(self, grant: Grant) -> bool:
        try:
            won = await self._shared.put(TABLE, grant.id, entry_of(grant))
        except ConnectionError as exc:
            raise GrantsUnavailable(f"grants are shared through Redis, which is unreachable ({exc})") from None
        if won:
            # the published change may come back first and be held already: that is no conflict
            await self._local.propose(grant)
        return won
