"""relay's Ed25519 key files and public keys: the first key of its key set, and kids.

The key file is PKCS#8 PEM; when absent it is generated on first start, created 0600
(in a 0700 directory made if missing) so only relay's user can read it. The kid is the
key's RFC 7638 thumbprint, so it changes exactly when the key does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.durable import write_temporary
from relay.identity.jose import b64url_encode

__all__ = ["load_or_create", "public_jwk"]

log = logging.getLogger("relay.identity.keys")


def _load(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
    return key


def _create(path: str) -> None:
    """Write a new key to ``path`` unless it exists. The key is written to a private
    temporary file first and linked into place, so processes starting together never
    read a half-written file and exactly one key wins."""
    # a fresh install has no var/lib/relay yet: make it, private to relay's user
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    temporary = write_temporary(path, pem)
    try:
        os.link(temporary, path)
        log.info("generated relay's identity key in %s", path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    finally:
        os.unlink(temporary)


def load_or_create(path: str) -> Ed25519PrivateKey:
    """The key in ``path``, generated first when the file is absent. Raises OSError or
    ValueError (not an Ed25519 PEM)."""
    if not os.path.exists(path):
        _create(path)
    return _load(path)


def public_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    """The public JWK of ``key``, its kid the RFC 7638 thumbprint."""
    x = b64url_encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")  # fmt: skip
    # RFC 7638 §3.2: the required members in lexicographic order, no whitespace
    thumbprint = orjson.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, option=orjson.OPT_SORT_KEYS)
    kid = b64url_encode(hashlib.sha256(thumbprint).digest()).decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}
