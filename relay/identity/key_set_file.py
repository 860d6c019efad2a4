"""relay's signing keys on disk: every key with its place in the rotation schedule.

One JSON file beside the identity key file, 0600 in a 0700 directory, replaced whole
through :mod:`relay.durable`, so a crash or kill -9 in the middle of a rotation leaves
the set before it or after it, never a torn one, and a restart keeps the same keys and
the same schedule. Its shape::

    {"format": "relay-signing-keys", "version": 1, "keys": [{"kid": ..., "created": ..., "activates": ...,
                             "retires": ... | null, "removes": ... | null,
                             "private_key": "-----BEGIN PRIVATE KEY-----..."}]}

``kid`` is recomputed from the private key on load and must match, so a hand-edited
file cannot publish one key under another's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.durable import replace
from relay.identity.key_schedule import KeyTimes
from relay.identity.signing import public_jwk
from relay.state_document import dump_document, parse_document

__all__ = ["StoredKey", "load_key_set", "save_key_set"]

_FORMAT = "relay-signing-keys"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class StoredKey:
    times: KeyTimes
    private_key: Ed25519PrivateKey


def _time(entry: dict[str, object], name: str, path: str, optional: bool) -> float | None:
    value = entry.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: key {entry.get('kid')!r}: {name} must be a Unix time, not {value!r}")
    return float(value)


def _parse_entry(entry: object, path: str) -> StoredKey:
    if not isinstance(entry, dict) or not isinstance(entry.get("private_key"), str):
        raise ValueError(f"{path}: every key needs a kid and a private_key PEM")
    key = serialization.load_pem_private_key(entry["private_key"].encode("ascii"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: key {entry.get('kid')!r} is not an Ed25519 private key")
    kid = public_jwk(key)["kid"]
    if entry.get("kid") != kid:
        raise ValueError(f"{path}: key {entry.get('kid')!r} has the thumbprint {kid!r}")
    created, activates = (_time(entry, n, path, optional=False) for n in ("created", "activates"))
    assert created is not None and activates is not None  # not optional: a number or raised
    times = KeyTimes(kid=kid, created=created, activates=activates,
                     retires=_time(entry, "retires", path, optional=True),
                     removes=_time(entry, "removes", path, optional=True))  # fmt: skip
    return StoredKey(times=times, private_key=key)


def load_key_set(path: str) -> tuple[StoredKey, ...]:
    """The keys in ``path``. Raises OSError (FileNotFoundError when absent) or
    ValueError naming the file and the key at fault."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        entries = parse_document(raw, _FORMAT, _VERSION, "keys")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not entries:
        raise ValueError(f"{path}: the key set holds no keys")
    return tuple(_parse_entry(entry, path) for entry in entries)


def save_key_set(path: str, keys: tuple[StoredKey, ...]) -> None:
    """Replace ``path`` with ``keys``, durably (0600; the directory made 0700 if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    entries: list[object] = [{
        "kid": k.times.kid, "created": k.times.created, "activates": k.times.activates,
        "retires": k.times.retires, "removes": k.times.removes,
        "private_key": k.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode("ascii"),
    } for k in keys]  # fmt: skip
    replace(path, dump_document(_FORMAT, _VERSION, "keys", entries))
