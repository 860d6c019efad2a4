"""Micro-benchmark: what relay's rotating signing keys cost on the request path (CPU ns).

    python -m benchmarks.micro_signing [--repeat N]

Times, with the process CPU clock (best of N): an ``X-Relay-Identity`` token served from
the signer's memo (what a signed-identity request costs, 29 times out of 30), the JWKS
answer's document, and a signature, each with a key set of one key and with the three
keys a rotation holds (retired, current, next). The key that signs is found from the
keys' times at each call, so the two columns show what rotation adds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.micro_heads import cpu_ns
from relay.identity import Identity
from relay.identity.ed25519_key import public_jwk
from relay.identity.key_ring import KeyRing
from relay.identity.key_schedule import KeyTimes
from relay.identity.key_set_file import StoredKey
from relay.identity.signing import IdentitySigner

ALICE = Identity("alice", "idp", ("writers",), ("orders:write",), {}, None, "kid", 0)


def stored_key(activates: float, retires: float | None) -> StoredKey:
    """A fresh Ed25519 signing key, active from ``activates`` and retired at ``retires`` (None: not)."""
    key = Ed25519PrivateKey.generate()
    removes = None if retires is None else retires + 3600
    return StoredKey(KeyTimes(public_jwk(key)["kid"], activates - 300, activates, retires, removes), key)


def _rings(now: float) -> dict[str, KeyRing]:
    return {
        "one key": KeyRing((stored_key(now - 100, None),)),
        "three keys": KeyRing((stored_key(now - 1000, now - 100), stored_key(now - 100, now + 600), stored_key(now + 600, None))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_signing")
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    baseline = cpu_ns(lambda: None, repeat)
    signers = {name: IdentitySigner(ring) for name, ring in _rings(time.time()).items()}
    cases: list[tuple[str, Callable[[IdentitySigner], Callable[[], object]]]] = [
        ("X-Relay-Identity from the memo", lambda s: lambda: s.identity_token(ALICE, "orders", time.time())),
        ("JWKS document", lambda s: s.jwks),
        ("a signature (sign)", lambda s: lambda: s.sign({"sub": "alice", "exp": 1})),
    ]
    print(f"{'case':<32} {'one key':>9} {'three keys':>11}  ns/call (the empty call, {baseline:.0f} ns, subtracted)")
    for name, make in cases:
        number = 20_000 if "signature" in name else 200_000
        row = [cpu_ns(make(signer), repeat, number) - baseline for signer in signers.values()]
        print(f"{name:<32} {row[0]:>9.0f} {row[1]:>11.0f}")


if __name__ == "__main__":
    main()
