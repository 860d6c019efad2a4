"""Keeping a process's signing keys current: the deciding process rotates them and
writes the key set file; every other process follows that file.

::

    decider (relayd, or the supervisor of workers)         followers (the workers)
      open: load STATE_DIR/signing-keys.json, or start       open: load the file (the decider
            it with server.identity_key; catch up                  wrote it before they started)
      at each instant the schedule names: advance, save      every follow interval: stat the file,
            (written whole: relay.durable), also when a            load it when it was replaced
            key activates: the file's time says relay
            was serving then
    every process: one log line, and one audit record where it has a log, per key transition

Only the decider writes, so no two processes ever generate different keys; a follower
that meets a kid it does not know (its own verifier, a token another worker signed)
looks at the file at once instead of waiting for its next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from relay.identity.key_ring import KeyRing
from relay.identity.key_rotation import KEY_SET_FILE, advance, first_key, follow_interval, resume, successor
from relay.identity.key_schedule import KeyState, KeyTimes, Schedule, next_event, signing_key, state
from relay.identity.key_set_file import StoredKey, load_key_set, save_key_set

__all__ = ["KeyKeeper", "key_record"]

log = logging.getLogger("relay.keys")

_RETRY = 1.0  # seconds before a key set the disk refused is written again
_IDLE = 3600.0  # the longest sleep when nothing is scheduled
#: what a transition means, for the log
_MEANING = {
    KeyState.NEXT: "published, not signing yet",
    KeyState.CURRENT: "signing",
    KeyState.RETIRED: "retired: published for verification only",
    KeyState.EXPIRED: "removed from the JWKS",
}

Transition = Callable[[KeyTimes, KeyState], None]


def key_record(times: KeyTimes, now_state: KeyState) -> dict[str, Any]:
    """The audit record of a key entering ``now_state``."""
    return {"ts": int(time.time() * 1000) / 1000, "event": "signing_key", "decision": "audit",
            "reason": f"key_{now_state.value}", "kid": times.kid, "created": times.created,
            "activates": times.activates, "retires": times.retires, "removes": times.removes}  # fmt: skip


def _signer_of(keys: tuple[StoredKey, ...], now: float) -> str | None:
    signer = signing_key(tuple(k.times for k in keys), now)
    return None if signer is None else signer.kid


_LIFE = tuple(KeyState)  # the order a key passes through its states


def _entered(seen: KeyState | None, now_state: KeyState) -> tuple[KeyState, ...]:
    """The states a key entered since it was last seen in ``seen``: each one in turn, so
    a tick that comes late (a busy or paused process) still logs and audits a key's
    retirement before its removal. A key seen for the first time is in its state now."""
    if seen is None or _LIFE.index(now_state) < _LIFE.index(seen):
        return (now_state,)
    return _LIFE[_LIFE.index(seen) + 1 : _LIFE.index(now_state) + 1]


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class KeyKeeper:
    """One process's view of relay's signing keys. ``decides``: this process rotates
    them (exactly one per state directory does); ``refresh``: verifiers' JWKS refresh
    interval (how often followers look at the file follows from it)."""

    def __init__(self, state_dir: str, seed_path: str, schedule: Schedule, refresh: float, *, decides: bool,
                 on_transition: Transition | None = None) -> None:  # fmt: skip
        self.path = os.path.join(state_dir, KEY_SET_FILE)
        self.decides = decides
        self._seed = seed_path
        self._schedule = schedule
        self._follow_every = follow_interval(refresh)
        self._on_transition = on_transition
        self._seen: dict[str, tuple[KeyTimes, KeyState]] = {}
        self._file: tuple[int, int, int] | None = None
        self._unsaved = False
        #: the key that signed when the decider last saved the set
        self._saved_signer: str | None = None
        self._ring: KeyRing | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    @property
    def ring(self) -> KeyRing:
        assert self._ring is not None, "the key set is not open"
        return self._ring

    def open(self) -> KeyRing:
        """Read the key set (the decider starts one, and catches up on what fell due
        while relay was down). Raises OSError, or ValueError naming the file and key."""
        now = time.time()
        if not self.decides:
            keys = load_key_set(self.path)
        else:
            try:
                held = load_key_set(self.path)
                keys = resume(held, self._schedule, now, saved=os.stat(self.path).st_mtime)
            except FileNotFoundError:
                held = keys = (first_key(self._seed, now),)
                log.info("starting relay's signing key set in %s with %s", self.path, self._seed)
            keys = advance(keys, self._schedule, now)
            if keys != held or not os.path.exists(self.path):
                save_key_set(self.path, keys)
        self._file = self._identify()
        self._ring = KeyRing(keys)
        self._saved_signer = _signer_of(keys, now)
        self._report(now)
        return self._ring

    def start(self) -> None:
        """Run the schedule on the current event loop until :meth:`close`."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def reconfigure(self, schedule: Schedule, refresh: float) -> None:
        """Follow a reloaded configuration's schedule from now on."""
        self._schedule = schedule
        self._follow_every = follow_interval(refresh)
        self._poke()

    def rotate(self, immediately: bool) -> StoredKey:
        """Add a new key now: signing once it has been published for the schedule's lead,
        or at once when ``immediately`` (verifiers that cached the JWKS before it refuse
        its tokens until they fetch it again). Raises OSError when it cannot be saved."""
        assert self.decides, "only the deciding process rotates"
        now = time.time()
        keys = successor(self.ring.keys, self._schedule, now, now if immediately else now + self._schedule.refresh)
        self._save(keys, now)
        log.warning("rotation asked for: key %s %s", keys[-1].times.kid,
                    "signs at once" if immediately else f"signs from {_when(keys[-1].times.activates)}")
        self._install(keys, now)
        return keys[-1]

    def follow(self) -> bool:
        """Read the key set file again if it was replaced since; True when the keys changed."""
        found = self._identify()
        if found is None or found == self._file:
            return False
        self._file = found  # a file that cannot be read is reported once, not at every look
        try:
            keys = load_key_set(self.path)
        except (OSError, ValueError) as exc:
            log.error("cannot read the key set (%s): the keys held stay in use", exc)
            return False
        self._install(keys, time.time())
        return True

    def status(self, now: float) -> list[dict[str, object]]:
        """One row per key of the set: kid, alg, state and its times."""
        return [{"kid": t.kid, "alg": "EdDSA", "state": state(t, now).value, "created": t.created,
                 "activates": t.activates, "retires": t.retires, "removes": t.removes}
                for t in self.ring.times()]  # fmt: skip

    # --- the schedule ----------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay(time.time())):
                    await wake.wait()
            self._tick()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _delay(self, now: float) -> float:
        when = next_event(self.ring.times(), now, self._schedule)
        delay = _IDLE if when is None else when - now
        if not self.decides:
            delay = min(delay, self._follow_every)
        elif self._unsaved:
            delay = min(delay, _RETRY)
        return max(delay, 0.01)  # a timer a hair early must not spin

    def _tick(self) -> None:
        now = time.time()
        if not self.decides:
            self.follow()
        else:
            keys = advance(self.ring.keys, self._schedule, now)
            activated = _signer_of(keys, now) != self._saved_signer
            if keys != self.ring.keys or activated:
                try:
                    self._save(keys, now)
                except OSError as exc:
                    # the followers cannot see an unsaved set: keep the old one (its key signs on)
                    log.error("cannot save the key set to %s (%s): retrying in %gs", self.path, exc, _RETRY)
                    self._unsaved = True
                    return
                self._unsaved = False
                self._install(keys, now)
        self._report(now)

    def _save(self, keys: tuple[StoredKey, ...], now: float) -> None:
        save_key_set(self.path, keys)
        self._file = self._identify()
        self._saved_signer = _signer_of(keys, now)

    def _install(self, keys: tuple[StoredKey, ...], now: float) -> None:
        self.ring.replace(keys)
        self._report(now)

    def _identify(self) -> tuple[int, int, int] | None:
        """What tells one version of the file from the next (it is replaced, never edited)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _report(self, now: float) -> None:
        current = {t.kid: t for t in self.ring.times()}
        changes = [(t, state(t, now)) for t in current.values()]
        changes += [(t, KeyState.EXPIRED) for kid, (t, _) in self._seen.items() if kid not in current]
        for times, now_state in changes:
            seen = self._seen.get(times.kid)
            for entered in _entered(None if seen is None else seen[1], now_state):
                self._seen[times.kid] = (times, entered)
                log.info("signing key %s: %s (activates %s, retires %s, removed %s)", times.kid, _MEANING[entered],
                         _when(times.activates), _when(times.retires), _when(times.removes))  # fmt: skip
                if self._on_transition is not None:
                    self._on_transition(times, entered)
        for kid in [kid for kid, (_, s) in self._seen.items() if s is KeyState.EXPIRED and kid not in current]:
            del self._seen[kid]  # reported gone: forget it
