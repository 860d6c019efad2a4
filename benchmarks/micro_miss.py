"""Micro-benchmark: what a token nobody has seen costs relay's authenticator, on warm and on
cold caches (CPU µs).

    python -m benchmarks.micro_miss [--tokens N]

``Authenticator.authenticate`` of the benchmarks' distinct RS256 tokens, each once, after
the cache was filled past its capacity (so every miss also evicts), beside the RSA check
alone (``RSAPublicKey.verify`` of the same tokens), and again with 4 MiB of memory written
between two misses, as the rest of a request's work and the kernel's evict a miss's code
and data in relayd. The three columns come from one invocation: read them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from benchmarks import tokens
from relay.config import ClaimsMapping, IssuerConfig
from relay.identity import Authenticator
from relay.identity.authenticator import CACHE_CAPACITY

_EVICTING = 4 * 1024 * 1024  # bytes written between two misses on cold caches


def _per_call_us(calls: list[Callable[[], object]], between: Callable[[], None] | None = None) -> float:
    """CPU µs per call, only the calls themselves counted."""
    spent = 0.0
    for call in calls:
        if between is not None:
            between()
        start = time.process_time()
        call()
        spent += time.process_time() - start
    return spent / len(calls) * 1e6


async def _measure(count: int) -> tuple[float, float, float]:
    keys = tokens.ensure()
    lines = keys.tokens["RS256"].read_text(encoding="ascii").split()
    fill, fresh = lines[:CACHE_CAPACITY + 1000], lines[CACHE_CAPACITY + 1000:][:2 * count]
    config = IssuerConfig(name="bench", issuer=tokens.ISSUER, audiences=(tokens.AUDIENCE,), algorithms=("RS256",),
                          claims=ClaimsMapping(), jwks_file=str(keys.jwks))  # fmt: skip
    auth = Authenticator((config,))
    await auth.start()
    try:
        for token in fill:
            auth.authenticate(b"Bearer " + token.encode(), ())

        def miss(token: str) -> Callable[[], object]:
            header = b"Bearer " + token.encode()
            return lambda: auth.authenticate(header, ())

        warm = _per_call_us([miss(t) for t in fresh[:count]])
        # written over between two misses, with nothing allocated: only the caches change
        junk, fill_with = bytearray(_EVICTING), bytes(range(256)) * (_EVICTING // 256)
        cold = _per_call_us([miss(t) for t in fresh[count:]], lambda: junk.__setitem__(slice(None), fill_with))
    finally:
        await auth.close()
    public = serialization.load_pem_public_key(keys.pem["RS256"].read_bytes())
    assert isinstance(public, rsa.RSAPublicKey)

    def verify(token: str) -> Callable[[], object]:
        head, payload, signature = token.encode().split(b".")
        signed = head + b"." + payload
        raw = base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))
        return lambda: public.verify(raw, signed, padding.PKCS1v15(), hashes.SHA256())

    return warm, cold, _per_call_us([verify(t) for t in fresh[:count]])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_miss")
    parser.add_argument("--tokens", type=int, default=4000, help="misses timed per column")
    count = parser.parse_args().tokens
    warm, cold, rsa_alone = asyncio.run(_measure(count))
    print(f"{'a miss, warm caches':<34} {'a miss, 4 MiB between':>22} {'the RSA check alone':>20}   (CPU µs)")
    print(f"{warm:<34.1f} {cold:>22.1f} {rsa_alone:>20.1f}")


if __name__ == "__main__":
    main()
