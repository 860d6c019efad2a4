"""Issuer keys over real HTTP: fetching (URL, OIDC discovery, file), rotation through the
unknown-kid refetch, removal invalidating cached tokens, failed fetches keeping the last
good keys, the refetch cooldown, timeouts, and reloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config import IssuerConfig
from relay.errors import Unauthorized
from relay.identity import Authenticator
from relay.identity.keys import IssuerKeys
from test_identity_support import ISS, bearer, ec_key, ed_key, eventually, issuer, jwks, jwks_server, rsa_key

A, B = ec_key("key-a"), ed_key("key-b")


@asynccontextmanager
async def started(*configs: IssuerConfig, **options: Any) -> AsyncIterator[Authenticator]:
    auth = Authenticator(configs, **{"refetch_cooldown": 0.0, "fetch_timeout": 5.0, **options})
    await auth.start()
    try:
        yield auth
    finally:
        await auth.close()


def reason(auth: Authenticator, token: bytes) -> str:
    with pytest.raises(Unauthorized) as caught:
        auth.authenticate(bearer(token), ())
    return caught.value.reason


def verifies(auth: Authenticator, token: bytes) -> bool:
    try:
        auth.authenticate(bearer(token), ())
    except Unauthorized:
        return False
    return True


def test_keys_from_a_jwks_url() -> None:
    async def main() -> None:
        with jwks_server(A, B) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                assert auth.authenticate(bearer(A.token()), ()).kid == "key-a"
                assert auth.authenticate(bearer(B.token()), ()).kid == "key-b"
                (status,) = auth.key_status()
                assert (status["source"], status["kids"], status["fetches"], status["failures"]) == (
                    server.url(), ["key-a", "key-b"], 1, 0)  # fmt: skip

    asyncio.run(main())


def test_keys_through_oidc_discovery() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            config = issuer(discovery_url=server.url("/.well-known/openid-configuration"))
            async with started(config) as auth:
                assert verifies(auth, A.token())
                assert server.requests("/.well-known/openid-configuration") == 1

    asyncio.run(main())


@pytest.mark.parametrize("discovery, why", [
    ({"issuer": "https://idp.example.test/evil", "jwks_uri": "JWKS"}, "is not"),
    ({"issuer": ISS}, "no jwks_uri"),
    ({"issuer": ISS, "jwks_uri": "http://192.0.2.1/jwks.json"}, "not https"),
])  # fmt: skip
def test_discovery_documents_that_are_refused(discovery: dict[str, str], why: str) -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            server.discovery = {k: server.url() if v == "JWKS" else v for k, v in discovery.items()}
            async with started(issuer(discovery_url=server.url("/.well-known/openid-configuration"))) as auth:
                (status,) = auth.key_status()
                assert status["kids"] == [] and status["failures"] == 1
                assert why in (status["last_error"] or "")
                assert reason(auth, A.token()) == "unknown_kid"
                assert server.requests() == 0

    asyncio.run(main())


def test_a_new_key_verifies_after_the_unknown_kid_refetch() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                token = B.token()
                server.serve(A, B)  # the provider rotates in B
                assert reason(auth, token) == "unknown_kid"  # answered now, never waiting for a fetch
                await asyncio.to_thread(server.wait_for_requests, 2)
                await eventually(lambda: verifies(auth, token), "the refetched key")
                assert auth.key_status()[0]["kids"] == ["key-a", "key-b"]

    asyncio.run(main())


def test_a_burst_of_unknown_kids_makes_one_fetch() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                for i in range(50):
                    assert reason(auth, A.token(kid=f"unknown-{i}")) == "unknown_kid"
                await eventually(lambda: auth.key_status()[0]["fetches"] == 2, "the refetch")
                assert await auth.refresh_keys() == {"test": True}  # waits for any fetch in flight
                assert server.requests() == 3  # start, one refetch for all 50, this refresh

    asyncio.run(main())


def test_refetch_cooldown() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            keys = IssuerKeys(issuer(jwks_url=server.url()), lambda: None, cooldown=3600.0)
            assert not keys.request_refetch()  # not running yet
            assert await keys.refresh()
            keys.run()
            assert not keys.request_refetch()  # the fetch just made counts
            stopped = keys.stop()
            assert stopped is not None
            eager = IssuerKeys(issuer(jwks_url=server.url()), lambda: None, cooldown=0.0)
            assert await eager.refresh()
            eager.run()
            assert eager.request_refetch()
            assert not eager.request_refetch()  # one already pending
            await asyncio.to_thread(server.wait_for_requests, 3)
            task = eager.stop()
            assert task is not None and not eager.request_refetch()
            await asyncio.gather(stopped, task, return_exceptions=True)

    asyncio.run(main())


def test_a_removed_key_stops_its_tokens_at_once_cached_ones_included() -> None:
    async def main() -> None:
        with jwks_server(A, B) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                token_a, token_b = A.token(), B.token()
                assert verifies(auth, token_a) and verifies(auth, token_a)  # now cached
                assert auth.cache_stats()["hits"] == 1
                server.serve(B)
                assert await auth.refresh_keys() == {"test": True}
                assert reason(auth, token_a) == "unknown_kid"
                assert verifies(auth, token_b)

    asyncio.run(main())


def test_a_key_replaced_under_the_same_kid_stops_the_old_tokens() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                old = A.token()
                assert verifies(auth, old)
                successor = ec_key("key-a")
                server.serve(successor)
                await auth.refresh_keys()
                assert reason(auth, old) == "bad_signature"
                assert verifies(auth, successor.token())

    asyncio.run(main())


@pytest.mark.parametrize("breakage", ["status", "not json", "empty set", "no usable key", "too big", "redirect"])
def test_a_failed_fetch_keeps_the_last_good_keys(breakage: str) -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                cached, fresh = A.token(), A.token(kid="key-a", jti="other")
                assert verifies(auth, cached)
                if breakage == "status":
                    server.status = 500
                elif breakage == "not json":
                    server.document = b"<html>maintenance</html>"
                elif breakage == "empty set":
                    server.serve()
                elif breakage == "no usable key":
                    server.serve(A.jwk(use="enc"), {"kty": "EC", "kid": "x"})
                elif breakage == "too big":
                    server.document = b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
                else:
                    server.redirect_to = "http://127.0.0.1:1/jwks.json"
                assert await auth.refresh_keys() == {"test": False}
                (status,) = auth.key_status()
                assert status["kids"] == ["key-a"] and status["failures"] == 1 and status["last_error"]
                assert verifies(auth, cached) and verifies(auth, fresh)

    asyncio.run(main())


def test_an_unreachable_or_stalled_provider_keeps_the_keys() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url()), fetch_timeout=0.5) as auth:
                token = A.token()
                server.hold = True  # answers wait until the test ends: the fetch must time out
                assert await asyncio.wait_for(auth.refresh_keys(), 5) == {"test": False}
                assert "timed out" in (auth.key_status()[0]["last_error"] or "")
                assert verifies(auth, token)
        async with started(issuer(jwks_url=server.url())) as auth:  # the server is gone now
            assert auth.key_status()[0]["failures"] == 1
            assert reason(auth, token) == "unknown_kid"

    asyncio.run(main())


def test_periodic_refresh_runs_in_the_background() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            # 50 ms is far below what the config allows (10 s): the test needs several rounds
            async with started(issuer(jwks_url=server.url(), refresh=0.05)) as auth:
                server.serve(A, B)
                await asyncio.to_thread(server.wait_for_requests, 3)
                await eventually(lambda: verifies(auth, B.token()), "the refreshed key set")

    asyncio.run(main())


def test_a_missing_key_file_is_reported_and_retried(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "jwks.json"
        config = issuer(jwks_file=str(path), refresh=0.05)
        async with started(config, refetch_cooldown=0.05) as auth:
            assert "No such file" in (auth.key_status()[0]["last_error"] or "")
            path.write_bytes(jwks(A))
            await eventually(lambda: verifies(auth, A.token()), "the key file to be read again")

    asyncio.run(main())


def test_update_keeps_unchanged_issuers_and_starts_new_ones() -> None:
    async def main() -> None:
        other = rsa_key("other-1")
        with jwks_server(A) as first, jwks_server(other) as second:
            mine = issuer(jwks_url=first.url())
            theirs = issuer(name="other", issuer="https://other.example.test/", jwks_url=second.url())
            async with started(mine) as auth:
                auth.update((replace(mine, leeway=10.0), theirs))
                token = other.token({"iss": "https://other.example.test/", "sub": "carol", "aud": "relay",
                                     "exp": 4_000_000_000})  # fmt: skip
                await eventually(lambda: verifies(auth, token), "the new issuer's keys")
                assert first.requests() == 1  # the unchanged issuer kept its keys
                assert verifies(auth, A.token())
                auth.update((theirs,))
                assert reason(auth, A.token()) == "issuer"

    asyncio.run(main())


def test_fetch_never_blocks_the_request_path() -> None:
    async def main() -> None:
        with jwks_server(A) as server:
            async with started(issuer(jwks_url=server.url())) as auth:
                server.hold = True
                loop = asyncio.get_running_loop()
                began = loop.time()
                for i in range(20):
                    assert reason(auth, B.token(kid=f"new-{i}")) == "unknown_kid"
                assert verifies(auth, A.token())
                assert loop.time() - began < 1.0  # the held fetch is in a thread, not here
                server.release.set()

    asyncio.run(main())
