"""Deciding and following relay's key set: the first key, successors, catching up after
downtime, retention across reloads, and processes that follow the file one decider writes."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import orjson
import pytest

from relay.identity.ed25519_key import load_or_create, public_jwk
from relay.identity.key_keeper import KeyKeeper, key_record
from relay.identity.key_ring import KeyRing
from relay.identity.key_rotation import KEY_SET_FILE, advance, first_key, publication_lead, resume
from relay.identity.key_schedule import KeyState, Schedule, signing_key, state
from relay.identity.key_set_file import StoredKey, load_key_set
from relay.identity.signing import IdentitySigner

DAY = 86400.0
SCHEDULE = Schedule(period=30 * DAY, refresh=301.0, retention=3600.0)


@pytest.fixture
def first(tmp_path: Path) -> tuple[StoredKey, ...]:
    return (first_key(str(tmp_path / "identity.pem"), 0.0),)


def kids(keys: tuple[StoredKey, ...]) -> list[str]:
    return [k.times.kid for k in keys]


def signer_at(keys: tuple[StoredKey, ...], now: float) -> str | None:
    found = signing_key(tuple(k.times for k in keys), now)
    return None if found is None else found.kid


def test_the_first_key_is_the_identity_key_and_signs_at_once(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "identity.pem"
    key = first_key(str(path), 1000.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.times.kid == public_jwk(load_or_create(str(path)))["kid"]  # the same key, read again
    assert state(key.times, 1000.0) is KeyState.CURRENT


def test_a_successor_is_published_one_lead_before_the_period_ends(first: tuple[StoredKey, ...]) -> None:
    assert advance(first, SCHEDULE, 30 * DAY - 302) == first
    keys = advance(first, SCHEDULE, 30 * DAY - 301)
    assert len(keys) == 2 and keys[1].times.activates == 30 * DAY
    assert signer_at(keys, 30 * DAY - 1) == keys[0].times.kid and signer_at(keys, 30 * DAY) == keys[1].times.kid
    assert advance(keys, SCHEDULE, 30 * DAY - 300) == keys  # one successor at a time


def test_after_downtime_longer_than_a_period_the_old_key_signs_until_the_new_one_is_published(
        first: tuple[StoredKey, ...]) -> None:  # fmt: skip
    back = 95 * DAY
    keys = advance(first, SCHEDULE, back)
    assert keys[1].times.created == back and keys[1].times.activates == back + SCHEDULE.refresh
    assert signer_at(keys, back + SCHEDULE.refresh - 1) == first[0].times.kid


def test_expired_keys_go_and_a_longer_retention_after_a_reload_keeps_retired_ones_longer(
        first: tuple[StoredKey, ...]) -> None:  # fmt: skip
    keys = advance(first, SCHEDULE, 30 * DAY - 301)
    retires = 30 * DAY
    assert keys[0].times.removes == retires + 3600
    longer = Schedule(period=30 * DAY, refresh=301.0, retention=7200.0)
    kept = advance(keys, longer, retires + 10)
    assert kept[0].times.removes == retires + 7200
    assert advance(kept, SCHEDULE, retires + 20)[0].times.removes == retires + 7200  # never shortened
    assert kids(advance(kept, longer, retires + 7200)) == [keys[1].times.kid]


def test_a_handover_while_relay_was_down_waits_a_full_lead_from_the_restart(first: tuple[StoredKey, ...]) -> None:
    keys = advance(first, SCHEDULE, 30 * DAY - 301)  # saved then; relay went down before 30 d
    back = 30 * DAY + 100
    again = resume(keys, SCHEDULE, back, saved=30 * DAY - 301)
    assert signer_at(again, back) == first[0].times.kid
    assert again[1].times.activates == back + SCHEDULE.refresh == again[0].times.retires
    assert again[0].times.removes == back + SCHEDULE.refresh + 3600
    assert signer_at(again, back + SCHEDULE.refresh) == keys[1].times.kid
    # saved at the activation: relay was serving then, nothing is put off
    assert resume(keys, SCHEDULE, back, saved=30 * DAY) == keys


def test_a_ring_signs_by_time_and_publishes_what_is_not_removed(first: tuple[StoredKey, ...]) -> None:
    keys = advance(first, SCHEDULE, 30 * DAY - 301)
    ring = KeyRing(keys)
    old, new = kids(keys)
    assert ring.signing(30 * DAY - 1).times.kid == old and ring.signing(30 * DAY).times.kid == new
    assert ring.signing(30 * DAY - 1).times.kid == old  # asked about an earlier instant again
    listed = lambda now: [k["kid"] for k in orjson.loads(ring.jwks(now))["keys"]]  # noqa: E731
    assert listed(30 * DAY - 301) == [old, new] == listed(30 * DAY + 3599)
    assert listed(30 * DAY + 3600) == [new]
    assert ring.verifier(old) is not None and ring.verifier("nope") is None


def keeper(tmp_path: Path, decides: bool, schedule: Schedule = SCHEDULE, **kwargs: object) -> KeyKeeper:
    return KeyKeeper(str(tmp_path / "state"), str(tmp_path / "identity.pem"), schedule, 300.0, decides=decides,
                     **kwargs)  # type: ignore[arg-type]


def test_the_decider_starts_a_private_key_set_and_followers_read_it(tmp_path: Path) -> None:
    seen: list[tuple[str, KeyState]] = []
    decider = keeper(tmp_path, True, on_transition=lambda t, s: seen.append((t.kid, s)))
    ring = decider.open()
    path = tmp_path / "state" / KEY_SET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert kids(load_key_set(str(path))) == kids(ring.keys)
    assert seen == [(ring.keys[0].times.kid, KeyState.CURRENT)]
    follower = keeper(tmp_path, False)
    assert kids(follower.open().keys) == kids(ring.keys)
    assert follower.follow() is False  # the file has not changed

    new = decider.rotate(immediately=True)
    assert decider.ring.signing(time.time()).times.kid == new.times.kid
    assert (new.times.kid, KeyState.CURRENT) in seen and (ring.keys[0].times.kid, KeyState.RETIRED) in seen
    signer = IdentitySigner(follower.ring, follower.follow)
    assert signer.verifier(new.times.kid) is not None  # an unknown kid made it look at the file again
    assert [row["state"] for row in follower.status(time.time())] == ["retired", "current"]


def test_a_follower_never_starts_a_key_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        keeper(tmp_path, False).open()
    assert not (tmp_path / "identity.pem").exists()


def test_a_follower_keeps_its_keys_when_the_file_is_replaced_by_garbage(tmp_path: Path) -> None:
    keeper(tmp_path, True).open()
    follower = keeper(tmp_path, False)
    held = kids(follower.open().keys)
    path = tmp_path / "state" / KEY_SET_FILE
    os.replace(path, tmp_path / "moved")
    path.write_bytes(b"{")
    assert follower.follow() is False and kids(follower.ring.keys) == held


def test_the_decider_saves_when_a_key_activates_so_a_restart_knows_it_was_serving(tmp_path: Path) -> None:
    quick = Schedule(period=2.0, refresh=publication_lead(0.5), retention=0.2)

    async def run() -> None:
        decider = keeper(tmp_path, True, quick)
        ring = decider.open()
        decider.start()
        try:
            deadline = time.monotonic() + 10
            while len({k.times.kid for k in ring.keys}) < 2 or ring.signing(time.time()) is ring.keys[0]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)  # the keeper runs on this loop: give it turns
            activated = ring.signing(time.time()).times.activates
            path = tmp_path / "state" / KEY_SET_FILE
            deadline = time.monotonic() + 10
            while os.stat(path).st_mtime < activated:
                assert time.monotonic() < deadline, "the activation was not saved"
                await asyncio.sleep(0.02)
        finally:
            await decider.close()

    asyncio.run(run())


def test_the_audit_record_of_a_transition_names_the_key_and_its_times(first: tuple[StoredKey, ...]) -> None:
    record = key_record(first[0].times, KeyState.CURRENT)
    assert record["event"] == "signing_key" and record["reason"] == "key_current"
    assert record["kid"] == first[0].times.kid and record["activates"] == 0.0 and record["decision"] == "audit"


def test_a_key_that_went_past_two_states_between_looks_is_reported_in_both(tmp_path: Path) -> None:
    # no retention: a key retired at once is removed at once, as a process that was paused
    # past both instants sees it
    at_once = Schedule(period=None, refresh=1.0, retention=0.0)
    decider = keeper(tmp_path, True, at_once)
    first_kid = decider.open().keys[0].times.kid
    seen: list[tuple[str, KeyState]] = []
    follower = keeper(tmp_path, False, at_once, on_transition=lambda t, s: seen.append((t.kid, s)))
    follower.open()
    new = decider.rotate(immediately=True)
    assert follower.follow() is True
    assert [s for kid, s in seen if kid == first_kid] == [KeyState.CURRENT, KeyState.RETIRED, KeyState.EXPIRED]
    assert [s for kid, s in seen if kid == new.times.kid] == [KeyState.CURRENT]
