"""Deciding relay's key set: its first key, a successor when one is due, keys dropped
once no token they signed can be alive.

Only one process decides (relayd itself, or the supervisor of its workers); the others
follow the key set file it writes. ``advance`` is the whole decision, a function of the
keys, the schedule and the time, so a restart after any downtime simply catches up:
a successor that falls due while relay was down is created at start and published for
a full lead before it signs, the old key signing meanwhile. ``resume`` covers the other
downtime: a handover that came, or comes within a lead, after relay last served its JWKS
is put off until the new key has been published for a full lead since the restart.
"""

from __future__ import annotations

import os
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config import FlowConfig, ServerConfig, TokensConfig
from relay.identity import ed25519_key
from relay.identity.key_schedule import KeyState, KeyTimes, Schedule, add_successor, rotation_due, state
from relay.identity.key_set_file import StoredKey
from relay.identity.signing import LIFETIME

__all__ = ["KEY_SET_FILE", "advance", "first_key", "follow_interval", "longest_token_life", "publication_lead",
           "resume", "schedule_of", "successor"]  # fmt: skip

#: the key set's file name in ``server.state_dir``
KEY_SET_FILE = "signing-keys.json"


def follow_interval(refresh: float) -> float:
    """How often a worker looks at the key set file for a change (at most a second)."""
    return min(1.0, refresh / 10)


def publication_lead(refresh: float) -> float:
    """How long before it signs a new key is in the file: verifiers' ``refresh``, plus
    the time every worker may take to see the file and publish the key too."""
    return refresh + follow_interval(refresh)


def longest_token_life(flows: tuple[FlowConfig, ...], tokens: TokensConfig | None) -> float:
    """The longest life of a token relay signs with these flows: X-Relay-Identity tokens
    of signed-identity flows, the ``max_token_ttl`` of exchangeable ones."""
    lives = [float(LIFETIME) for f in flows if f.headers.identity == "signed" and f.auth == "jwt"]
    if tokens is not None:
        lives += [f.max_token_ttl for f in flows if f.max_token_ttl is not None]
    return max(lives, default=0.0)


def schedule_of(server: ServerConfig, flows: tuple[FlowConfig, ...], tokens: TokensConfig | None) -> Schedule:
    """The rotation schedule a validated configuration asks for."""
    return Schedule(period=server.identity_key_rotation, refresh=publication_lead(server.identity_jwks_refresh),
                    retention=longest_token_life(flows, tokens))  # fmt: skip


def first_key(seed_path: str, now: float) -> StoredKey:
    """The key a new key set starts with: ``server.identity_key``'s (generated when the
    file is absent), signing at once — there is no older key to sign with while it would
    wait, and the key a relay before rotation used keeps its kid."""
    key = ed25519_key.load_or_create(seed_path)
    created = os.stat(seed_path).st_mtime
    kid = ed25519_key.public_jwk(key)["kid"]
    return StoredKey(KeyTimes(kid=kid, created=min(created, now), activates=now), key)


def successor(keys: tuple[StoredKey, ...], schedule: Schedule, now: float, activates: float) -> tuple[StoredKey, ...]:
    """``keys`` with a fresh key signing from ``activates``; the keys that would still
    sign then retire at that instant."""
    key = Ed25519PrivateKey.generate()
    times = add_successor(tuple(k.times for k in keys), ed25519_key.public_jwk(key)["kid"], now, activates, schedule)
    return (*(StoredKey(t, k.private_key) for t, k in zip(times, keys)), StoredKey(times[-1], key))


def advance(keys: tuple[StoredKey, ...], schedule: Schedule, now: float) -> tuple[StoredKey, ...]:
    """``keys`` as they should be at ``now``: expired keys dropped, every retired key kept
    at least ``retention`` past its retirement (a reload may have made tokens live
    longer; it never shortens what was promised), and a successor added when due."""
    kept = tuple(_retained(k, schedule) for k in keys if state(k.times, now) is not KeyState.EXPIRED) or keys
    due = rotation_due(tuple(k.times for k in kept), now, schedule)
    return kept if due is None else successor(kept, schedule, now, due)


def _retained(key: StoredKey, schedule: Schedule) -> StoredKey:
    times = key.times
    if times.retires is None or times.removes is None or times.removes >= times.retires + schedule.retention:
        return key
    return StoredKey(replace(times, removes=times.retires + schedule.retention), key.private_key)


def resume(keys: tuple[StoredKey, ...], schedule: Schedule, now: float, saved: float) -> tuple[StoredKey, ...]:
    """``keys`` at a start ``now``, the set last saved at ``saved`` by a running decider
    (which saves at every activation too, so ``saved`` is the last moment relay is known
    to have served its JWKS). Every handover after ``saved`` is put off to a full lead
    after ``now`` at the earliest: verifiers whose cache ran out while relay was down
    could not fetch the next key, and get it only now. Meanwhile the key that signed at
    ``saved`` signs on; it was in every JWKS relay served, so verifiers hold it still."""
    earliest = now + schedule.refresh

    def later(t: float | None) -> float | None:
        return t if t is None or t <= saved else max(t, earliest)

    def redo(t: KeyTimes) -> KeyTimes:
        activates, retires = later(t.activates), later(t.retires)
        assert activates is not None
        if (activates, retires) == (t.activates, t.retires):
            return t
        removes = None if retires is None else max(t.removes or retires, retires + schedule.retention)
        return replace(t, activates=activates, retires=retires, removes=removes)

    return tuple(StoredKey(redo(k.times), k.private_key) for k in keys)
