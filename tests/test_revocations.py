"""Revocations in one process and in the state file that keeps them across restarts.

The set: the ttl cap, restoring saved entries (lapsed ones dropped, the longer of two
kept). The file: created private, written atomically (a reader in another thread never
sees a torn file while it is rewritten, a crashed writer's leftover changes nothing),
saves applied in order, and every corrupt file refused with its path named (relayd must
not serve without knowing what is revoked). relay's identity key gets its directory made.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import orjson
import pytest

from relay.errors import StartupError
from relay.identity.claims import Identity
from relay.identity.revocation import MAX_TTL, RevocationEntry, Revocations
from relay.identity.revocation_file import FILE_NAME, RevocationFile
from relay.units import parse_duration
from test_identity_support import relay_signer

NOW = 1_800_000_000.0


def identity(subject: str = "wanda", jti: str | None = "j-1", kid: str = "k-1") -> Identity:
    return Identity(subject, "idp", (), (), {}, jti, kid, int(NOW) + 600)


def entry(value: str, until: float, kind: str = "sub") -> RevocationEntry:
    return RevocationEntry(kind=kind, value=value, until=until)  # type: ignore[typeddict-item]


# --- the set ------------------------------------------------------------------------------

def test_the_ttl_is_capped_at_366_days() -> None:
    revocations = Revocations()
    assert MAX_TTL == parse_duration("366d")
    assert revocations.add("sub", "wanda", MAX_TTL, NOW) == NOW + MAX_TTL
    for absurd in (parse_duration("367d"), 1e12, float("inf")):
        with pytest.raises(ValueError, match=r"366 days"):
            revocations.add("sub", "bob", absurd, NOW)
    assert [e["value"] for e in revocations.entries(NOW)] == ["wanda"]


def test_none_held_costs_one_attribute_and_a_lapsed_set_is_emptied() -> None:
    revocations = Revocations()
    assert revocations.active is False
    revocations.add("jti", "j-1", 60, NOW)
    assert revocations.active is True and revocations.match(identity(), NOW) == "jti"
    assert revocations.match(identity(), NOW + 61) is None
    assert revocations.entries(NOW + 61) == [] and revocations.active is False


def test_restore_drops_lapsed_entries_and_keeps_the_longer_one() -> None:
    revocations = Revocations()
    revocations.add("sub", "wanda", 100, NOW)
    revocations.restore([entry("wanda", NOW + 50), entry("bob", NOW - 1), entry("k-1", NOW + 500, "kid")], NOW)
    assert sorted((e["kind"], e["value"], e["until"]) for e in revocations.entries(NOW)) == [
        ("kid", "k-1", NOW + 500), ("sub", "wanda", NOW + 100),
    ]
    assert revocations.match(identity(subject="carol", jti=None), NOW) == "kid"


# --- the file -----------------------------------------------------------------------------

def save(file: RevocationFile, entries: list[RevocationEntry]) -> None:
    asyncio.run(file.save(lambda: entries))


def test_open_makes_a_private_directory_and_an_absent_file_is_no_revocations(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "relay"
    file = RevocationFile(str(state))
    assert file.open() == []
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert file.path == str(state / FILE_NAME)


def test_a_save_is_read_back_whole_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    entries = [entry("wanda", NOW + 3600), entry("j-9", NOW + 60, "jti"), entry("k-1", NOW + 9.5, "kid")]
    save(file, entries)
    assert RevocationFile(str(tmp_path)).open() == entries
    assert stat.S_IMODE(os.stat(file.path).st_mode) == 0o600
    assert os.listdir(tmp_path) == [FILE_NAME]


def test_a_reader_never_sees_a_torn_file_while_it_is_rewritten(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    small = [entry("wanda", NOW)]
    large = [entry(f"subject-{n}" * 20, NOW + n) for n in range(500)]  # ~200 KiB: many write() calls
    save(file, small)
    seen: list[int] = []
    failures: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(len(file.load()))
            except StartupError as exc:  # a torn or half-written file reads as corrupt
                failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()

    async def rewrite() -> None:
        for n in range(60):
            await file.save(lambda n=n: large if n % 2 else small)  # type: ignore[misc]

    try:
        asyncio.run(rewrite())
    finally:
        done.set()
        reader.join(30)
    assert failures == []
    assert set(seen) <= {1, 500} and seen
    assert os.listdir(tmp_path) == [FILE_NAME]


def test_saves_are_written_in_turn_and_each_takes_the_newest_set(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    revocations = Revocations()

    async def two_revokes() -> None:
        revocations.add("sub", "wanda", 60, NOW)
        first = asyncio.create_task(file.save(lambda: revocations.entries(NOW)))
        revocations.add("sub", "bob", 60, NOW)
        second = asyncio.create_task(file.save(lambda: revocations.entries(NOW)))
        await asyncio.gather(second, first)

    asyncio.run(two_revokes())
    assert sorted(e["value"] for e in file.load()) == ["bob", "wanda"]


def test_a_crashed_writers_leftover_changes_nothing(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    save(file, [entry("wanda", NOW)])
    leftover = tmp_path / f"{FILE_NAME}.12345.tmp"
    leftover.write_bytes(b'{"format": "relay-rev')  # died mid-write, before its rename
    assert file.load() == [entry("wanda", NOW)]
    save(file, [entry("wanda", NOW), entry("bob", NOW)])
    assert [e["value"] for e in file.load()] == ["wanda", "bob"]


def test_a_failed_save_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    save(file, [entry("wanda", NOW)])

    def broken() -> list[RevocationEntry]:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        asyncio.run(file.save(broken))
    assert file.load() == [entry("wanda", NOW)]


@pytest.mark.parametrize("content, reason", [
    (b"", "not JSON"),
    (b'{"format": "relay-revocations", "version": 1, "entries": [{"kind": "sub", "val', "not JSON"),
    (b"[]", "not a relay-revocations document"),
    (b'{"format": "relay-revocations", "version": 2, "entries": []}', "version 2"),
    (b'{"format": "relay-revocations", "version": 1, "entries": {}}', "'entries' is not a list"),
    (b'{"format": "relay-revocations", "version": 1, "entries": [{"kind": "hash", "value": "x", "until": 1}]}',
     "entries[0]: kind must be one of jti, sub, kid"),
    (b'{"format": "relay-revocations", "version": 1, "entries": [{"kind": "sub", "value": "", "until": 1}]}',
     "entries[0]: kind must be one of"),
    (b'{"format": "relay-revocations", "version": 1, "entries": [{"kind": "sub", "value": "x", "until": "1"}]}',
     "entries[0]: until must be a number"),
    (b'{"format": "relay-revocations", "version": 1, "entries": [{"kind": "sub", "value": "x"}]}',
     "entries[0] is not an object of kind, value and until"),
])
def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    with pytest.raises(StartupError) as caught:
        RevocationFile(str(tmp_path)).open()
    message = str(caught.value)
    assert message.startswith(f"revocations file {tmp_path / FILE_NAME} is corrupt")
    assert reason in message and "move it aside" in message


def test_an_unreadable_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()
    with pytest.raises(StartupError, match=f"revocations file {tmp_path / FILE_NAME}: Is a directory"):
        RevocationFile(str(tmp_path)).open()


def test_a_state_dir_that_cannot_be_made_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StartupError, match=f"state directory {tmp_path / 'file' / 'state'}"):
        RevocationFile(str(tmp_path / "file" / "state")).open()


def test_the_file_format_is_plain_json(tmp_path: Path) -> None:
    file = RevocationFile(str(tmp_path))
    save(file, [entry("wanda", NOW)])
    assert orjson.loads(Path(file.path).read_bytes()) == {
        "format": "relay-revocations", "version": 1, "entries": [{"kind": "sub", "value": "wanda", "until": NOW}],
    }


# --- relay's identity key -----------------------------------------------------------------

def test_the_identity_keys_missing_directory_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "relay" / "identity-ed25519.pem"
    signer = relay_signer(str(path))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert relay_signer(str(path)).kid == signer.kid
