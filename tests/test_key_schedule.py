"""relay's signing-key rotation schedule, with time driven explicitly."""

from __future__ import annotations

import pytest

from relay.identity.key_schedule import (KeyState, KeyTimes, Schedule, add_successor, next_event,
                                         published, rotation_due, signing_key, state)  # fmt: skip

DAY = 86400.0
SCHEDULE = Schedule(period=30 * DAY, refresh=300.0, retention=3600.0)
FIRST = (KeyTimes(kid="a", created=0.0, activates=0.0),)


def rotate(keys: tuple[KeyTimes, ...], kid: str, now: float) -> tuple[KeyTimes, ...]:
    activates = rotation_due(keys, now, SCHEDULE)
    assert activates is not None
    return add_successor(keys, kid, now, activates, SCHEDULE)


def test_no_rotation_before_the_period_less_one_refresh() -> None:
    assert rotation_due(FIRST, 30 * DAY - 301, SCHEDULE) is None
    assert rotation_due(FIRST, 30 * DAY - 300, SCHEDULE) == 30 * DAY


def test_the_next_key_is_published_one_refresh_before_it_signs() -> None:
    created = 30 * DAY - 300
    keys = rotate(FIRST, "b", created)
    for now in (created, 30 * DAY - 0.001):
        assert [k.kid for k in published(keys, now)] == ["a", "b"]
        assert signing_key(keys, now) == keys[0]
        assert state(keys[1], now) is KeyState.NEXT
    signer = signing_key(keys, 30 * DAY)
    assert signer is not None and signer.kid == "b"
    assert state(keys[0], 30 * DAY) is KeyState.RETIRED


def test_the_old_key_stays_published_until_its_last_token_expires() -> None:
    keys = rotate(FIRST, "b", 30 * DAY - 300)
    last_use = 30 * DAY
    assert [k.kid for k in published(keys, last_use + 3600 - 0.001)] == ["a", "b"]
    assert [k.kid for k in published(keys, last_use + 3600)] == ["b"]
    assert state(keys[0], last_use + 3600) is KeyState.EXPIRED


def test_one_successor_at_a_time() -> None:
    keys = rotate(FIRST, "b", 30 * DAY - 300)
    assert rotation_due(keys, 30 * DAY - 1, SCHEDULE) is None
    # once b signs, its own period counts from its activation
    assert rotation_due(keys, 30 * DAY + 1, SCHEDULE) is None
    assert rotation_due(keys, 60 * DAY - 300, SCHEDULE) == 60 * DAY


def test_late_after_downtime_the_successor_still_waits_one_refresh() -> None:
    now = 45 * DAY  # relay was down when the rotation fell due
    activates = rotation_due(FIRST, now, SCHEDULE)
    assert activates == now + 300
    keys = add_successor(FIRST, "b", now, activates, SCHEDULE)
    assert signing_key(keys, now + 299) == keys[0]


def test_forced_and_emergency_rotations() -> None:
    forced = add_successor(FIRST, "b", 100.0, 100.0 + SCHEDULE.refresh, SCHEDULE)
    assert signing_key(forced, 399.0) == forced[0]
    emergency = add_successor(FIRST, "b", 100.0, 100.0, SCHEDULE)
    signer = signing_key(emergency, 100.0)
    assert signer is not None and signer.kid == "b"
    assert emergency[0].removes == 100.0 + SCHEDULE.retention


def test_a_forced_rotation_replaces_a_pending_handover() -> None:
    keys = rotate(FIRST, "b", 30 * DAY - 300)
    # the operator forces "c" to sign now: "b" never signs and goes with its retention
    keys = add_successor(keys, "c", 30 * DAY - 200, 30 * DAY - 200, SCHEDULE)
    signer = signing_key(keys, 30 * DAY + 10)
    assert signer is not None and signer.kid == "c"
    assert [k.retires for k in keys[:2]] == [30 * DAY - 200, 30 * DAY - 200]


def test_no_period_means_no_rotation() -> None:
    schedule = Schedule(period=None, refresh=300.0, retention=3600.0)
    assert rotation_due(FIRST, 1000 * DAY, schedule) is None
    assert next_event(FIRST, 1000 * DAY, schedule) is None


def test_next_event_walks_the_schedule() -> None:
    assert next_event(FIRST, 0.0, SCHEDULE) == 30 * DAY - 300
    keys = rotate(FIRST, "b", 30 * DAY - 300)
    assert next_event(keys, 30 * DAY - 300, SCHEDULE) == 30 * DAY
    assert next_event(keys, 30 * DAY, SCHEDULE) == 30 * DAY + 3600
    assert next_event(keys, 30 * DAY + 3600, SCHEDULE) == 60 * DAY - 300


def test_a_period_not_longer_than_the_refresh_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than the JWKS refresh"):
        Schedule(period=300.0, refresh=300.0, retention=60.0)
