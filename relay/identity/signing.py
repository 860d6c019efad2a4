"""relay's own identity key: the Ed25519 key that signs ``X-Relay-Identity`` tokens.

Downstream services verify those tokens with the JWKS from ``IdentitySigner.jwks()``
(served at ``/.well-known/relay-jwks.json``). The key file is PKCS#8 PEM; when absent
it is generated on first start, created 0600 (in a 0700 directory made if missing) so
only relay's user can read it. The kid is the key's RFC 7638 thumbprint, so it changes
exactly when the key does.
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
from relay.identity.claims import Identity
from relay.identity.jose import b64url_encode

__all__ = ["LIFETIME", "IdentitySigner", "public_jwk"]

log = logging.getLogger(__name__)

LIFETIME = 60  # seconds an X-Relay-Identity token is valid
#: a signed token is reused for this long, so it always has LIFETIME - REUSE seconds left;
#: signing costs ~35 µs, more than the rest of a request, and the window caps that at
#: one signature per (identity, flow) per 30 s
REUSE = 30
_MEMO_CAPACITY = 4096


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
    temporary file first and linked into place, so workers starting together never
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
        pass  # another worker created it first: use theirs
    finally:
        os.unlink(temporary)


def public_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    """The public JWK of ``key``, its kid the RFC 7638 thumbprint."""
    x = b64url_encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")  # fmt: skip
    # RFC 7638 §3.2: the required members in lexicographic order, no whitespace
    thumbprint = orjson.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, option=orjson.OPT_SORT_KEYS)
    kid = b64url_encode(hashlib.sha256(thumbprint).digest()).decode("ascii")
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


class IdentitySigner:
    """Signs short-lived JWTs with relay's Ed25519 key. Raises OSError/ValueError if the
    key file cannot be read, created or parsed."""

    __slots__ = ("issuer", "kid", "_key", "_header", "_jwks", "_memo")

    def __init__(self, key_path: str, issuer: str = "relay") -> None:
        self.issuer = issuer
        if not os.path.exists(key_path):
            _create(key_path)
        self._key = _load(key_path)
        jwk = public_jwk(self._key)
        self.kid = jwk["kid"]
        self._header = b64url_encode(orjson.dumps({"alg": "EdDSA", "kid": self.kid, "typ": "JWT"}))
        self._jwks = orjson.dumps({"keys": [jwk]})
        self._memo: dict[tuple[Identity, str], tuple[int, bytes]] = {}

    def sign(self, claims: dict[str, object]) -> bytes:
        """A compact EdDSA JWS of ``claims`` (serialized with orjson)."""
        signing_input = self._header + b"." + b64url_encode(orjson.dumps(claims))
        return signing_input + b"." + b64url_encode(self._key.sign(signing_input))

    def identity_token(self, identity: Identity, flow: str, now: float) -> bytes:
        """The X-Relay-Identity JWT: ``identity`` verified by relay for ``flow`` (its ``aud``).

        Claims: iss (relay), sub, aud (flow name), idp (issuer name), groups, scope
        (space-separated), iat and exp = iat + LIFETIME, where iat is ``now`` rounded
        down to REUSE seconds so the same token serves the whole window.
        """
        start = int(now) - int(now) % REUSE
        key = (identity, flow)
        memo = self._memo.get(key)
        if memo is not None and memo[0] == start:
            return memo[1]
        token = self.sign({
            "iss": self.issuer, "sub": identity.subject, "aud": flow, "idp": identity.issuer,
            "groups": identity.groups, "scope": " ".join(identity.scopes),
            "iat": start, "exp": start + LIFETIME,
        })  # fmt: skip
        if len(self._memo) >= _MEMO_CAPACITY:
            self._memo.clear()  # O(1) amortized; a cleared entry costs one signature
        self._memo[key] = (start, token)
        return token

    def jwks(self) -> bytes:
        """The JWK Set of relay's public key, as served to downstream verifiers."""
        return self._jwks
