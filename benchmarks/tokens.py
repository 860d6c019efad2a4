"""Benchmark signing keys and pre-minted JWTs, cached between runs.

One RSA-2048 key (RS256) and one P-256 key (ES256). Every system under test gets the
same public keys in the form it reads: relayd a JWKS file, HAProxy and the aiohttp proxy
a PEM file. For each algorithm ``COUNT`` distinct tokens are minted, one per line; the
single-token scenarios use the first line, the others cycle through all of them.

RSA signing costs about a millisecond, so minting 100,000 RS256 tokens takes a while:
the result is kept in ``benchmarks/.cache/jwt`` and reused until the tokens get within a
day of expiring or the claims below change.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

CACHE = Path(__file__).resolve().parent / ".cache" / "jwt"
ISSUER = "https://idp.bench.test/"
AUDIENCE = "relay-bench"
GROUP = "bench-readers"
COUNT = 100_000
ALGORITHMS = ("RS256", "ES256")
LIFETIME = 30 * 86400
MIN_REMAINING = 86400
_BATCH = 2_000


@dataclass(frozen=True)
class KeyFiles:
    """Where the public halves live, and the token file of each algorithm."""

    jwks: Path
    pem: dict[str, Path]
    tokens: dict[str, Path]

    def first_token(self, alg: str) -> str:
        with open(self.tokens[alg], encoding="ascii") as lines:
            return lines.readline().strip()


def _meta(expires: int) -> dict[str, object]:
    return {"issuer": ISSUER, "audience": AUDIENCE, "group": GROUP, "count": COUNT,
            "expires": expires}


def files(root: Path = CACHE) -> KeyFiles:
    """Where the files are (or will be, once ``ensure`` has run)."""
    return KeyFiles(jwks=root / "jwks.json",
                    pem={alg: root / f"{alg}.pub.pem" for alg in ALGORITHMS},
                    tokens={alg: root / f"{alg}.tokens" for alg in ALGORITHMS})


def _fresh(root: Path) -> bool:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    expires = meta.get("expires")
    return (isinstance(expires, int) and expires - time.time() > MIN_REMAINING
            and meta == _meta(expires))


def ensure(root: Path = CACHE) -> KeyFiles:
    """The key and token files, minting them first if missing or stale."""
    keys = files(root)
    if not _fresh(root):
        _mint_all(root, keys)
    return keys


# --- minting ----------------------------------------------------------------------------

# Set in each worker process by _init_worker: the private key and its header.
_worker: dict[str, object] = {}


def _init_worker(alg: str, private_pem: bytes, kid: str, issued: int) -> None:
    _worker.update(alg=alg, kid=kid, issued=issued,
                   key=serialization.load_pem_private_key(private_pem, password=None))


def _mint_batch(start: int) -> list[str]:
    alg, kid, issued = _worker["alg"], _worker["kid"], _worker["issued"]
    assert isinstance(alg, str) and isinstance(kid, str) and isinstance(issued, int)
    tokens = []
    for i in range(start, min(start + _BATCH, COUNT)):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"bench-{i:06d}",
                  "email": f"bench-{i:06d}@users.bench.test", "groups": [GROUP],
                  "scope": "bench:read", "iat": issued, "exp": issued + LIFETIME,
                  "jti": f"{alg}-{i:06d}"}
        tokens.append(jwt.encode(claims, _worker["key"], algorithm=alg,  # type: ignore[arg-type]
                                 headers={"kid": kid}))
    return tokens


def _new_key(alg: str) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, dict[str, Any]]:
    """A fresh private key for ``alg`` and its public half as a JWK."""
    if alg == "RS256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return rsa_key, RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return ec_key, ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)


def _mint_all(root: Path, paths: KeyFiles) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)
    issued = int(time.time())
    jwks = []
    for alg in ALGORITHMS:
        kid = f"bench-{alg.lower()}-{issued}"
        key, jwk = _new_key(alg)
        paths.pem[alg].write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        jwks.append(jwk | {"kid": kid, "alg": alg, "use": "sig"})
        private_pem = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        print(f"bench: minting {COUNT:,} {alg} tokens (kept for later runs)",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        with ProcessPoolExecutor(os.cpu_count() or 1, initializer=_init_worker,
                                 initargs=(alg, private_pem, kid, issued)) as pool:
            batches = pool.map(_mint_batch, range(0, COUNT, _BATCH))
            tmp = paths.tokens[alg].with_suffix(".tmp")
            with open(tmp, "w", encoding="ascii") as out:
                for batch in batches:
                    out.write("\n".join(batch) + "\n")
            tmp.replace(paths.tokens[alg])
        print(f"bench:   {alg} done in {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
    paths.jwks.write_text(json.dumps({"keys": jwks}, indent=1))
    # written last: its presence says every other file is complete
    (root / "meta.json").write_text(json.dumps(_meta(issued + LIFETIME)))
