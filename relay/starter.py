"""``relayd init DIR``: a working starting point for relay installed from a package.

It writes, into ``DIR/conf``, the shipped default configuration (``relay.toml``, the
annotated reference) and its lighttpd pairings, and makes fresh development keys in
``DIR/conf/keys`` (the "dev" issuer's JWKS and the private keys ``relay-devtoken``
signs with), so that ``cd DIR && relayd`` serves as a checkout's ``tools/run`` does. The
files come with the package (``relay/starter/``: in a checkout, links to ``conf/``).
Nothing that exists is overwritten.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from relay.devtoken import ALGORITHMS
from relay.errors import StartupError

__all__ = ["init"]

_SHIPPED = ("relay.toml", "lighttpd.conf", "lighttpd-sockproxy.conf", "lighttpd-tls.sh")
_KEYS_README = """\
Development keys made by `relayd init`: for trying relay out, never for production tokens.

dev-rs256.pem, dev-es256.pem, dev-eddsa.pem   private keys (PKCS#8 PEM) that relay-devtoken signs with
dev-jwks.json                                 their public keys, the jwks_file of the "dev" issuer in relay.toml
"""


def _new_key(alg: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(65537, 2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` unless it exists; whether it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return True


def _dev_keys(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    jwks_path = directory / "dev-jwks.json"
    if jwks_path.exists():
        return []  # keys and JWKS belong together: a directory with a JWKS is left alone
    written, public = [], []
    for alg, kid in ALGORITHMS.items():
        key = _new_key(alg)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        if _write_new(directory / f"{kid}.pem", pem, 0o600):
            written.append(directory / f"{kid}.pem")
        jwk = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key()))
        public.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    _write_new(jwks_path, json.dumps({"keys": public}, indent=2).encode() + b"\n")
    _write_new(directory / "README", _KEYS_README.encode())
    return [*written, jwks_path]


#: where relay.toml and lighttpd.conf keep their state, relative to the directory they run in
_STATE_DIRS = ("var/run", "var/log", "var/data", "var/lighttpd/htdocs", "var/lighttpd/uploads")


def init(directory: Path) -> list[Path]:
    """Write the starter files under ``directory``; the paths written (existing ones are kept)."""
    conf = directory / "conf"
    try:
        conf.mkdir(parents=True, exist_ok=True)
        for state in _STATE_DIRS:
            (directory / state).mkdir(parents=True, exist_ok=True)
        written = []
        shipped = resources.files("relay") / "starter"
        for name in _SHIPPED:
            data = (shipped / name).read_bytes()
            if _write_new(conf / name, data, 0o755 if name.endswith(".sh") else 0o644):
                written.append(conf / name)
        return written + _dev_keys(conf / "keys")
    except OSError as exc:
        raise StartupError(f"cannot write the starter files in {directory}: {exc.strerror or exc}") from None
