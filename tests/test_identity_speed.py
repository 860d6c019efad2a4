"""How much the verified-token cache saves: authenticate() on a cache hit vs a full
verification, for each algorithm of the default issuer. Prints the figures (run with -s);
asserts only a wide margin so a busy machine cannot fail it."""

from __future__ import annotations

import asyncio
import timeit
from pathlib import Path

import pytest

from relay.fastpath import COMPILED
from relay.identity import Authenticator
from test_identity_support import bearer, ec_key, ed_key, issuer, jwks, rsa_key

KEYS = {"RS256": rsa_key("speed-rsa"), "ES256": ec_key("speed-ec"), "EdDSA": ed_key("speed-ed")}


def best_us(call: object, number: int) -> float:
    """The fastest of 5 runs, per call, in µs: the least disturbed by other work."""
    assert callable(call)
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_a_cache_hit_is_far_cheaper_than_verifying(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(*KEYS.values()))
    header = bearer(KEYS[alg].token())

    async def main() -> tuple[float, float]:
        auth = Authenticator((issuer(jwks_file=str(path)),))
        await auth.start()
        try:
            auth.authenticate(header, ())
            # a new bytes object per call, as each request brings: its hash is not cached
            hit = best_us(lambda: auth.authenticate(bytes(header), ()), 20_000)

            def miss() -> None:
                auth.purge_cache()
                auth.authenticate(header, ())

            return hit, best_us(miss, 200)
        finally:
            await auth.close()

    hit, full = asyncio.run(main())
    print(f"\n{alg}: cache hit {hit:.2f} µs, full verification {full:.1f} µs "
          f"({'compiled' if COMPILED else 'pure-Python'} cache)")  # fmt: skip
    assert hit * 10 < full
