"""Micro-benchmark: what just-in-time grants add to a token's admission (CPU ns), in the process.

    python -m benchmarks.micro_grants [--repeat N]

Times, with the process CPU clock (best of N), ``Authenticator.authenticate`` on a
verified-token cache hit, the path every request with a known token takes: a token relay
issued that rests on no grant (the grant check is one ``is None`` test), and one that rests
on a live grant (the book is looked up on every request, so a revoked grant is refused at once).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.micro_heads import cpu_ns
from benchmarks.micro_signing import stored_key
from relay.grants.model import Party, new_grant
from relay.identity import Authenticator, IdentitySigner
from relay.identity.key_ring import KeyRing
from relay.tokens.own import OwnTokens

ISSUER = "https://relay.example.test"


def _header(signer: IdentitySigner, grants: list[str] | None) -> bytes:
    now = int(time.time())
    claims: dict[str, object] = {"iss": ISSUER, "aud": ISSUER, "sub": "alice", "idp": "dev", "groups": [],
                                 "scope": "flow:vault", "jti": "j", "iat": now, "exp": now + 3600}
    if grants is not None:
        claims["grants"] = grants
    return b"Bearer " + signer.sign(claims)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_grants")
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    signer = IdentitySigner(KeyRing((stored_key(time.time() - 100, None),)), issuer=ISSUER)
    authenticator = Authenticator(())
    authenticator.trust_own(OwnTokens(ISSUER, signer))
    grant = new_grant("vault", Party("alice", "dev"), "why", 3600.0, 60.0, time.time())
    authenticator.grants.hold(grant.decided("approved", Party("olivia", "dev"), time.time()))
    plain, granted = _header(signer, None), _header(signer, [grant.id])
    for header in (plain, granted):
        authenticator.authenticate(header, ())  # verified once: the rest are cache hits
    print(f"{'authenticate, cache hit':<42} {'ns/call':>8}")
    for name, header in (("relay's token, no grant", plain), ("relay's token resting on a live grant", granted)):
        print(f"{name:<42} {cpu_ns(lambda: authenticator.authenticate(header, ()), repeat):>8.0f}")


if __name__ == "__main__":
    main()
