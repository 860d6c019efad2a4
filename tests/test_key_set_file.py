"""relay's signing-key set on disk: private, whole after every write, checked on load."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.identity.key_schedule import KeyTimes
from relay.identity.key_set_file import StoredKey, load_key_set, save_key_set
from relay.identity.signing import public_jwk


def stored(created: float, activates: float, retires: float | None = None) -> StoredKey:
    key = Ed25519PrivateKey.generate()
    removes = None if retires is None else retires + 60.0
    times = KeyTimes(kid=public_jwk(key)["kid"], created=created, activates=activates,
                     retires=retires, removes=removes)  # fmt: skip
    return StoredKey(times=times, private_key=key)


def test_a_saved_set_loads_with_the_same_keys_and_schedule(tmp_path: Path) -> None:
    path = str(tmp_path / "lib" / "identity-keys.json")
    keys = (stored(0.0, 0.0, retires=100.0), stored(40.0, 100.0))
    save_key_set(path, keys)
    loaded = load_key_set(path)
    assert [k.times for k in loaded] == [k.times for k in keys]
    assert [public_jwk(k.private_key) for k in loaded] == [public_jwk(k.private_key) for k in keys]


def test_the_file_is_private_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "identity-keys.json"
    save_key_set(str(path), (stored(0.0, 0.0),))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["identity-keys.json"]  # no temporary left


def saved_with_edit(path: Path, member: str, value: object) -> str:
    """A one-key set saved to ``path``, then hand-edited: ``member`` set to ``value``."""
    save_key_set(str(path), (stored(0.0, 0.0),))
    document = orjson.loads(path.read_bytes())
    document["keys"][0][member] = value
    path.write_bytes(orjson.dumps(document))
    return str(path)


def test_a_key_under_another_kid_is_refused(tmp_path: Path) -> None:
    path = saved_with_edit(tmp_path / "identity-keys.json", "kid", "someone-else")
    with pytest.raises(ValueError, match="'someone-else' has the thumbprint"):
        load_key_set(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "not JSON"),
        (b'{"format": "relay-revocations", "version": 1, "entries": []}', "not a relay-signing-keys document"),
        (b'{"format": "relay-signing-keys", "version": 2, "keys": []}', "this relayd reads version 1"),
        (b'{"format": "relay-signing-keys", "version": 1, "keys": []}', "holds no keys"),
        (b'{"format": "relay-signing-keys", "version": 1, "keys": [{"kid": "a"}]}', "needs a kid and a private_key"),
    ],
)
def test_a_broken_set_is_refused_with_the_file_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "identity-keys.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        load_key_set(str(path))
    assert str(path) in str(caught.value)


def test_a_time_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = saved_with_edit(tmp_path / "identity-keys.json", "activates", "soon")
    with pytest.raises(ValueError, match="activates must be a Unix time, not 'soon'"):
        load_key_set(path)
