"""One flow's response cache in one worker: entries keyed by identity scope, LRU-bounded.

An entry's key is the scope's value (``issuer subject`` for "subject", the group for
"group", nothing for "public"), the Host and normalized target, and the headers the
upstream's ``Vary`` named with the values the request had for them. The names ``Vary`` lists are remembered per
(scope value, target), as the answer that set them is the only one that knows them. The
whole flow's bytes (bodies plus stored heads) stay under ``max_bytes``: the least recently
used entries go first. A body over ``max_entry_bytes`` is never stored; the caller tees
into an ``Intake`` only up to that limit and gives up past it, so a large answer streams
without being held.

A stale entry is kept only when it has a validator (``ETag`` or ``Last-Modified``): the
caller then revalidates it with the upstream instead of fetching it whole. The counters
(``CacheCounters``) outlive the store: a reload that keeps the flow keeps counting on.

Lookups happen only after the flow's authentication and authorization have passed for the
request at hand; this module never decides admission, it only keeps scopes apart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: (scope value, target, the names Vary listed, the request's values of them): the names
#: too, since the names a target's answers vary on can change, and one request's value of
#: one header must never find the entry another stored under its value of another
Key = tuple[str, bytes, tuple[str, ...], tuple[bytes, ...]]
HeaderLookup = Callable[[str], bytes]


@dataclass(slots=True)
class Entry:
    status: int
    headers: bytes
    body: bytes
    stored_at: float
    fresh_for: float
    etag: bytes | None = None
    last_modified: bytes | None = None
    #: the subject whose request stored it, so a purge by subject finds it in any scope
    subject: str = ""

    @property
    def size(self) -> int:
        return len(self.headers) + len(self.body)

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return self.age(now) < self.fresh_for

    @property
    def revalidatable(self) -> bool:
        return self.etag is not None or self.last_modified is not None


@dataclass(slots=True)
class CacheCounters:
    """How a flow's cache answered: from a fresh entry (hit), from a stale one the upstream
    confirmed with a 304 (revalidated), or not at all (miss); body bytes it sent; entries
    pushed out under max_bytes."""

    hits: int = 0
    misses: int = 0
    revalidated: int = 0
    served_bytes: int = 0
    evictions: int = 0


@dataclass(slots=True)
class Intake:
    """A body on its way into the cache, up to ``limit`` bytes; ``overflowed`` once a
    piece would pass it (then what was held is dropped and nothing more is kept)."""

    limit: int
    pieces: list[bytes] = field(default_factory=list)
    held: int = 0
    overflowed: bool = False

    def add(self, piece: bytes) -> None:
        if self.overflowed:
            return
        self.held += len(piece)
        if self.held > self.limit:
            self.overflowed = True
            self.pieces = []
            return
        self.pieces.append(piece)

    def body(self) -> bytes | None:
        return None if self.overflowed else b"".join(self.pieces)


class ResponseCache:
    def __init__(self, max_bytes: int, max_entry_bytes: int, counters: CacheCounters | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._vary: dict[tuple[str, bytes], tuple[str, ...]] = {}
        self.bytes = 0
        self.counters = counters if counters is not None else CacheCounters()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, scope_value: str, target: bytes, header: HeaderLookup) -> Key:
        names = self._vary.get((scope_value, target), ())
        return (scope_value, target, names, tuple(header(name) for name in names))

    def lookup(self, scope_value: str, target: bytes, header: HeaderLookup, now: float) -> Entry | None:
        """The request's entry: fresh, or stale with a validator to revalidate it by; a
        stale one without is dropped. The caller counts the outcome."""
        key = self.key(scope_value, target, header)
        entry = self._entries.get(key)
        if entry is None or not (entry.revalidatable or entry.fresh(now)):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def forget(self, scope_value: str, target: bytes, header: HeaderLookup) -> None:
        """Drop the request's entry (the upstream answered a revalidation with a new answer)."""
        self._drop(self.key(scope_value, target, header))

    def store(self, scope_value: str, target: bytes, vary: tuple[str, ...],
              header: HeaderLookup, entry: Entry) -> bool:
        """Keep ``entry``; False when it is over the per-entry limit (nothing is kept)."""
        if entry.size > self.max_entry_bytes or entry.size > self.max_bytes:
            return False
        self._vary[(scope_value, target)] = tuple(name.lower() for name in vary)
        key = self.key(scope_value, target, header)
        self._drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.counters.evictions += 1
        return True

    def purge(self, subject: str | None = None) -> int:
        """Drop every entry, or those stored by ``subject``; how many went."""
        doomed = [k for k, e in self._entries.items() if subject is None or e.subject == subject]
        for key in doomed:
            self._drop(key)
        if subject is None:
            self._vary.clear()
        return len(doomed)

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
