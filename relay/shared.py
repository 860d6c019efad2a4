"""State every relayd behind one proxy agrees on, kept in one Redis (``[shared]``).

Each kind of state is a *table*: a Redis hash ``PREFIX:TABLE`` of field → entry, and
every change is also published on the channel ``PREFIX:changes`` as ``{"table",
"field", "until"}`` (plus ``"rank"`` and ``"data"`` for an entry that carries data).
An entry has a *rank*: a write only replaces an entry of lower rank, so instances that
write the same field at once agree on the outcome, and the one whose write won knows
it. A revocation's rank is when it lapses (a longer one wins) and its stored value that
time alone; an entry with data (a grant) is stored as ``"RANK UNTIL DATA"``.

An instance subscribes first and reads the snapshot (HGETALL of every table) after, so
no change published in between is missed; then it pushes what it holds that Redis lacks
(entries made while Redis was away, here or before a restart), and only then counts as
*in sync*. A lost connection
(or a PING unanswered within the timeout) ends the session; it reconnects with a
backoff doubling up to ``reconnect_max`` and starts over with subscribe and snapshot.

Revocations are the table ``revocations`` (``relay.identity.revocation_shared``),
just-in-time grants the table ``grants`` (``relay.grants.shared``); they share the
connection, channel and snapshot. State asked of Redis on each request (the shared rate
limits, ``relay.ratelimit_shared``) sends its commands on the session's connection (``command``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from relay.config import SharedConfig
from relay.sinks._resp import RedisAddress, RedisConnection, ReplyError, connect, pack

__all__ = ["Entries", "SharedEntry", "SharedState", "Table"]

log = logging.getLogger(__name__)


class SharedEntry(NamedTuple):
    """One field's entry: it replaces one of lower ``rank``; forgotten after ``until``."""

    rank: float
    until: float
    data: str = ""

    def stored(self) -> str:
        """The hash value: the until alone when it is the rank and there is no data."""
        if not self.data and self.rank == self.until:
            return repr(self.until)
        return f"{self.rank!r} {self.until!r} {self.data}"

    @classmethod
    def parse(cls, value: str) -> SharedEntry:
        """The entry a hash value holds. Raises ValueError."""
        parts = value.split(" ", 2)
        if len(parts) == 1:
            until = float(value)
            return cls(until, until)
        if len(parts) != 3:
            raise ValueError(f"not a shared entry: {value[:80]!r}")
        return cls(float(parts[0]), float(parts[1]), parts[2])


#: field → entry; a table's entries as Redis or an instance holds them
Entries = dict[str, SharedEntry]
_PING_EVERY = 1.0
_FIRST_RETRY = 0.05
# a higher rank replaces the entry (a value's rank is its first word); the hash lapses with
# its last entry; every instance is told. 1: written, 0: an entry of equal or higher rank is there
_PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local rank = tonumber(ARGV[2])
local lapses = tonumber(ARGV[3])
if old and tonumber(string.match(old, '^%S+')) >= rank then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIREAT', KEYS[1], math.ceil(lapses))
else redis.call('EXPIREAT', KEYS[1], math.ceil(lapses), 'GT') end
redis.call('PUBLISH', KEYS[2], ARGV[5])
return 1
"""


class Table:
    """One kind of shared state: what the instance holds, and what to do with what others put."""

    def __init__(self, name: str, held: Callable[[], Entries], received: Callable[[Entries], None]) -> None:
        self.name = name
        self.held = held
        self.received = received


class _Subscriber(RedisConnection):
    """A connection in subscribe mode: published messages go to ``on_message``."""

    on_message: Callable[[bytes], None] = staticmethod(lambda payload: None)

    def pushed(self, answer: Any) -> bool:
        if isinstance(answer, list) and len(answer) == 3 and answer[0] == b"message":
            self.on_message(answer[2])
            return True
        return False


class SharedState:
    """The sessions with Redis, one after another, for as long as relayd runs."""

    def __init__(self, config: SharedConfig, tables: Mapping[str, Table]) -> None:
        assert config.redis is not None
        self._config = config
        self._address = RedisAddress.from_url(config.redis)
        self._tables = tables
        self._channel = f"{config.key_prefix}:changes"
        self._commands: RedisConnection | None = None
        self._task: asyncio.Task[None] | None = None
        #: subscribed and the snapshot applied: this instance holds what every other one put
        self.in_sync = False
        #: sessions that ended (Redis lost or unanswered)
        self.disconnects = 0
        self.since = time.time()  # when in_sync last changed
        #: requests of fail-open flows served while not in sync
        self.unsynced_requests = 0
        #: set when the first session is in sync or has failed
        self._first_session = asyncio.Event()

    def status(self) -> dict[str, object]:
        """For ``relayctl status`` and the metrics: whether in sync, since when, how often lost."""
        return {"redis": self._config.redis, "in_sync": self.in_sync, "since": round(self.since, 3),
                "disconnects": self.disconnects, "unsynced_requests": self.unsynced_requests}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shared-state")

    async def first_session(self) -> bool:
        """Wait for the first session to be in sync or to fail, at most the connect and a
        few commands' ``timeout``; True when in sync. relayd listens after this, so a
        fail-closed flow does not answer 503 at every start only because Redis had not
        been asked yet, and a Redis that is down does not keep relayd from starting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_session.wait(), 2 * self._config.timeout)
        return self.in_sync

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def config(self) -> SharedConfig:
        return self._config

    def command(self, command: bytes) -> asyncio.Future[Any]:
        """Send one command (made by ``pack``) on the session's connection, with the others
        of this turn of the loop; its answer to come. Raises ConnectionError while not in
        sync, so nothing waits on a Redis known lost."""
        connection = self._commands
        if not self.in_sync or connection is None:
            raise ConnectionError(f"Redis at {self._config.redis} is unreachable")
        return connection.call_soon(command)

    async def put(self, table: str, field: str, entry: SharedEntry) -> bool:
        """Store and publish one entry; False when Redis holds one of equal or higher rank
        already (another instance's write won). Raises ConnectionError while not in sync."""
        connection = self._commands
        if not self.in_sync or connection is None:
            raise ConnectionError(f"Redis at {self._config.redis} is unreachable")
        return await self._put(connection, table, field, entry)

    async def _put(self, connection: RedisConnection, table: str, field: str, entry: SharedEntry) -> bool:
        change: dict[str, object] = {"table": table, "field": field, "until": entry.until}
        if entry.data:
            change |= {"rank": entry.rank, "data": entry.data}
        answer = await self._answer(connection, pack("EVAL", _PUT, 2, self._key(table), self._channel, field,
                                                     repr(entry.rank), repr(entry.until), entry.stored(),
                                                     orjson.dumps(change)))  # fmt: skip
        if isinstance(answer, ReplyError):
            raise ConnectionError(f"Redis refused the write: {answer}")
        return bool(answer)

    def _key(self, table: str) -> str:
        return f"{self._config.key_prefix}:{table}"

    async def _answer(self, connection: RedisConnection, command: bytes) -> Any:
        try:
            return await asyncio.wait_for(connection.call(command)[0], self._config.timeout)
        except TimeoutError:
            connection.close()
            raise ConnectionError(f"Redis did not answer within {self._config.timeout:g}s") from None

    async def _run(self) -> None:
        retry = _FIRST_RETRY
        while True:
            try:
                await self._session()
            except (OSError, ConnectionError, TimeoutError) as exc:
                if self.in_sync:  # a session that worked: the next attempt comes at once
                    retry = _FIRST_RETRY
                log.warning("shared state: %s; retrying in %.2gs", exc, retry)
            self._sync(False)
            self._first_session.set()
            await asyncio.sleep(retry)  # the backoff itself, not a wait for an event
            retry = min(retry * 2, self._config.reconnect_max)

    async def _session(self) -> None:
        timeout = self._config.timeout
        subscriber = await asyncio.wait_for(connect(self._address, _Subscriber), timeout)
        subscriber.on_message = self._message
        try:
            commands = await asyncio.wait_for(connect(self._address, RedisConnection), timeout)
        except BaseException:
            subscriber.close()
            raise
        try:
            await self._answer(subscriber, pack("SUBSCRIBE", self._channel))
            for name, table in self._tables.items():
                await self._catch_up(commands, name, table)
            self._commands = commands
            self._sync(True)
            self._first_session.set()
            while not subscriber.closed:
                await asyncio.sleep(_PING_EVERY)  # a heartbeat's period, not synchronisation
                if await self._answer(commands, pack("PING")) != b"PONG":
                    raise ConnectionError("Redis answered PING wrongly")
            raise ConnectionError("the subscription to Redis was lost")
        finally:
            self._commands = None
            subscriber.close()
            commands.close()

    async def _catch_up(self, commands: RedisConnection, name: str, table: Table) -> None:
        """Apply the snapshot of ``table``; push what this instance holds that Redis lacks."""
        raw = await self._answer(commands, pack("HGETALL", self._key(name)))
        if isinstance(raw, ReplyError):
            raise ConnectionError(f"Redis refused the snapshot: {raw}")
        now = time.time()
        stored: Entries = {}
        for i in range(0, len(raw), 2):
            try:
                stored[raw[i].decode()] = SharedEntry.parse(raw[i + 1].decode())
            except (UnicodeDecodeError, ValueError):
                log.warning("shared state: ignored %s field %r that is not relay's", name, raw[i][:80])
        table.received({field: entry for field, entry in stored.items() if entry.until > now})
        for field, entry in table.held().items():
            old = stored.get(field)
            if old is None or entry.rank > old.rank:
                await self._put(commands, name, field, entry)

    def _message(self, payload: bytes) -> None:
        try:
            change = orjson.loads(payload)
            table = self._tables.get(change["table"])
            if table is not None:
                until = float(change["until"])
                entry = SharedEntry(float(change.get("rank", until)), until, str(change.get("data", "")))
                table.received({str(change["field"]): entry})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("shared state: ignored a change that is not relay's: %r", payload[:200])

    def _sync(self, in_sync: bool) -> None:
        if in_sync != self.in_sync:
            self.in_sync, self.since = in_sync, time.time()
            if in_sync:
                log.info("shared state in sync with Redis at %s", self._config.redis)
            else:
                log.warning("shared state out of sync: Redis at %s lost; flows with shared_state = "
                            "\"fail-closed\" answer 503, \"fail-open\" ones serve on local state",
                            self._config.redis)
            if not in_sync:
                self.disconnects += 1
