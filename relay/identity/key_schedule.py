"""When relay's signing keys are published, sign, retire and go: the rotation schedule.

Pure arithmetic on timestamps, so every process that reads the same key set agrees on
which key signs at any instant without talking to the others, and tests drive time
explicitly. A key lives through four states:

``next``     published in the JWKS, not yet signing: verifiers that cache the JWKS for
             ``refresh`` seconds have seen it before the first token it signs;
``current``  signs every new token;
``retired``  no longer signs, still published until the last token it signed expires
             (``retention`` seconds: the longest lifetime any use of the signer issues);
``expired``  no token it signed is valid any more; dropped from the set.

A key's times are fixed when it is created, except ``retires``, which is set when its
successor is scheduled (to the successor's ``activates``) so the handover is one instant.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["KeyState", "KeyTimes", "Schedule", "add_successor", "next_event", "published",
           "rotation_due", "signing_key", "state"]  # fmt: skip


class KeyState(enum.Enum):
    NEXT = "next"
    CURRENT = "current"
    RETIRED = "retired"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class KeyTimes:
    """One key's place in the schedule (Unix seconds); ``retires`` is None until a
    successor is scheduled, ``removes`` is ``retires + retention``."""

    kid: str
    created: float
    activates: float
    retires: float | None = None
    removes: float | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """``period``: how long a key signs (None: no scheduled rotation); ``refresh``: the
    JWKS cache lifetime verifiers are told; ``retention``: how long a retired key stays
    published, at least the longest token lifetime."""

    period: float | None
    refresh: float
    retention: float

    def __post_init__(self) -> None:
        if self.period is not None and self.period <= self.refresh:
            raise ValueError(f"the rotation period ({self.period:g}s) must be longer than "
                             f"the JWKS refresh interval ({self.refresh:g}s)")  # fmt: skip


def state(key: KeyTimes, now: float) -> KeyState:
    if now < key.activates:
        return KeyState.NEXT
    if key.retires is None or now < key.retires:
        return KeyState.CURRENT
    if key.removes is None or now < key.removes:
        return KeyState.RETIRED
    return KeyState.EXPIRED


def signing_key(keys: tuple[KeyTimes, ...], now: float) -> KeyTimes | None:
    """The key that signs at ``now``: the latest activated one (None before any)."""
    active = [k for k in keys if state(k, now) is KeyState.CURRENT]
    return max(active, key=lambda k: k.activates, default=None)


def published(keys: tuple[KeyTimes, ...], now: float) -> tuple[KeyTimes, ...]:
    """The keys the JWKS lists at ``now``: every one not expired (the rest can go)."""
    return tuple(k for k in keys if state(k, now) is not KeyState.EXPIRED)


def rotation_due(keys: tuple[KeyTimes, ...], now: float, schedule: Schedule) -> float | None:
    """When the successor of the current key should start signing, if it is time to
    create it now; None if no rotation is scheduled, a successor exists, or it is early.

    The successor is created ``refresh`` before the current key's period ends, so it is
    published for one refresh interval before it signs; after downtime that made us
    late, it activates ``refresh`` from now instead, never earlier.
    """
    if schedule.period is None or any(state(k, now) is KeyState.NEXT for k in keys):
        return None
    current = signing_key(keys, now)
    if current is None:
        return None
    ends = current.activates + schedule.period
    if now < ends - schedule.refresh:
        return None
    return max(ends, now + schedule.refresh)


def add_successor(keys: tuple[KeyTimes, ...], kid: str, now: float, activates: float,
                  schedule: Schedule) -> tuple[KeyTimes, ...]:  # fmt: skip
    """``keys`` with a new key ``kid`` signing from ``activates``; every key that would
    still sign then retires at that instant and is removed ``retention`` later. A forced
    rotation passes ``now + refresh``; an emergency one ``now`` (caches miss the key)."""
    retiring = [replace(k, retires=activates, removes=activates + schedule.retention)
                if k.retires is None or k.retires > activates else k for k in keys]  # fmt: skip
    return (*retiring, KeyTimes(kid=kid, created=now, activates=activates))


def next_event(keys: tuple[KeyTimes, ...], now: float, schedule: Schedule) -> float | None:
    """The next instant after ``now`` at which the set changes state or needs a
    successor: a key activates or is removed, or a rotation falls due."""
    times = [t for k in keys for t in (k.activates, k.removes) if t is not None and t > now]
    current = signing_key(keys, now)
    if schedule.period is not None and current is not None and current.retires is None:
        times.append(max(current.activates + schedule.period - schedule.refresh, now))
    return min(times, default=None)
