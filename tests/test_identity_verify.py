"""Authenticator.authenticate against real keys: valid tokens, the attack suite (each → 401
with its audit reason), the Authorization header, the cache, issuers per flow, revocation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from relay.config import ClaimsMapping, IssuerConfig
from relay.errors import Unauthorized
from relay.identity import Authenticator, Identity
from relay.identity.jose import b64url_decode, b64url_encode
from test_identity_support import (
    AUD, ISS, Key, b64, bearer, ec_key, ed_key, forge, good_claims, issuer, jwks, rsa_key, segment, split,
)  # fmt: skip

RSA, EC, ED = rsa_key("rsa-1"), ec_key("ec-1"), ed_key("ed-1")


class Harness:
    """A started Authenticator reading ``keys`` from a JWKS file, with its own event loop."""

    def __init__(self, directory: Path, keys: tuple[Key | dict[str, Any], ...], configs: tuple[IssuerConfig, ...]):
        self.loop = asyncio.new_event_loop()
        path = directory / "jwks.json"
        path.write_bytes(jwks(*keys))
        self.configs = tuple(replace(c, jwks_file=str(path)) for c in configs or (issuer(),))
        self.auth = Authenticator(self.configs)
        self.loop.run_until_complete(self.auth.start())

    def update(self, configs: tuple[IssuerConfig, ...]) -> None:
        async def on_the_loop() -> None:
            self.auth.update(configs)

        self.loop.run_until_complete(on_the_loop())

    def ok(self, token: bytes, allowed: tuple[str, ...] = ()) -> Identity:
        return self.auth.authenticate(bearer(token), allowed)

    def reason(self, token: bytes | None, allowed: tuple[str, ...] = (), raw: bool = False) -> str:
        header = token if raw or token is None else bearer(token)
        with pytest.raises(Unauthorized) as caught:
            self.auth.authenticate(header, allowed)
        return caught.value.reason

    def close(self) -> None:
        self.loop.run_until_complete(self.auth.close())
        self.loop.close()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def factory(*keys: Key | dict[str, Any], configs: tuple[IssuerConfig, ...] = ()) -> Harness:
        harness = Harness(tmp_path, keys or (RSA, EC, ED), configs)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


@pytest.fixture
def h(make: Any) -> Harness:
    harness: Harness = make()
    return harness


def resign(key: Key, header: dict[str, Any], payload: dict[str, Any]) -> bytes:
    """A token with exactly this header and payload, properly signed by ``key`` (for
    tokens PyJWT refuses to make)."""
    head, body, _ = split(forge(header, payload))
    algorithm = jwt.get_algorithm_by_name(key.alg)
    signature = algorithm.sign(head + b"." + body, algorithm.prepare_key(key.pem()))
    return head + b"." + body + b"." + b64url_encode(signature)


# -- valid tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA, EC, ED], ids=lambda k: k.alg)
def test_valid_tokens_give_the_identity(h: Harness, key: Key) -> None:
    claims = good_claims()
    identity = h.ok(key.token(claims))
    assert (identity.subject, identity.issuer, identity.kid, identity.jti) == ("alice", "test", key.kid, "jti-1")
    assert identity.groups == ("ingest-writers",)
    assert identity.scopes == ("orders:write", "orders:read")
    assert identity.expires_at == claims["exp"]
    assert identity.claims["aud"] == AUD
    with pytest.raises(TypeError):  # every request with the token shares them: read-only
        identity.claims["sub"] = "root"  # type: ignore[index]


def test_a_token_that_never_expires_is_verified_and_cached(h: Harness) -> None:
    # "never", spelled as a number past any clock: held to 2**53 s, not an overflow
    for exp in (2**53 + 1, 2**63 - 1, 2**64 - 1):  # past 2**64 the JSON number is a float: malformed
        token = RSA.token(good_claims(exp=exp))
        assert h.ok(token).expires_at == 2**53
        assert h.ok(token) is h.ok(token)  # the cache took it


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "PS384", "PS512"])
def test_every_rsa_algorithm_verifies_when_pinned_and_the_key_allows_it(make: Any, alg: str) -> None:
    key = Key("rsa-any", alg, RSA.private, publish_alg=False)
    harness = make(key, configs=(issuer(algorithms=(alg,)),))
    assert harness.ok(key.token()).subject == "alice"


def test_es384_verifies(make: Any) -> None:
    key = ec_key("ec-384", "ES384")
    assert make(key, configs=(issuer(algorithms=("ES384",)),)).ok(key.token()).kid == "ec-384"


def test_leeway_accepts_a_just_expired_token_and_a_barely_early_one(h: Harness) -> None:
    now = int(time.time())
    assert h.ok(RSA.token(good_claims(exp=now - 20))).subject == "alice"  # leeway is 30 s
    assert h.ok(RSA.token(good_claims(nbf=now + 20, iat=now + 20))).subject == "alice"


def test_audience_list_containing_ours_is_accepted(h: Harness) -> None:
    assert h.ok(RSA.token(good_claims(aud=["other", AUD]))).subject == "alice"


# -- the attack suite ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_casing(h: Harness, alg: str) -> None:
    assert h.reason(forge({"alg": alg, "kid": RSA.kid}, good_claims())) == "algorithm"
    assert h.reason(forge({"alg": alg}, good_claims())) == "algorithm"


def _hs256(secret: bytes, kid: str) -> bytes:
    head_body = segment({"alg": "HS256", "kid": kid}) + b"." + segment(good_claims())
    return head_body + b"." + b64(hmac.new(secret, head_body, hashlib.sha256).digest()).encode()


def test_hs256_signed_with_the_rsa_public_key_pem_or_jwk(h: Harness, make: Any) -> None:
    pem = RSA.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    jwk = json.dumps(RSA.jwk()).encode()
    for secret in (pem, jwk):
        assert h.reason(_hs256(secret, RSA.kid)) == "algorithm"
    # even an issuer wrongly pinned to HS256 (config validation refuses it) has no HMAC
    # verifier on an RSA key: the key, not the token, decides how it is used
    lax = make(RSA, configs=(issuer(algorithms=("HS256", "RS256")),))
    assert lax.reason(_hs256(pem, RSA.kid)) == "algorithm"


@pytest.mark.parametrize("kid", [
    "../../../../dev/null", "/etc/passwd", "rsa-1/../rsa-1", "rsa-1\x00", "x' OR '1'='1",
    "rsa-1 ", "RSA-1", "k" * 4000, "",
])  # fmt: skip
def test_kid_traversal_and_injection_find_no_key(h: Harness, kid: str) -> None:
    assert h.reason(RSA.token(kid=kid)) == "unknown_kid"


def test_missing_kid(h: Harness) -> None:
    assert h.reason(resign(RSA, {"alg": "RS256"}, good_claims())) == "malformed"


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk"])
def test_headers_pointing_at_an_attacker_key(h: Harness, name: str) -> None:
    attacker = rsa_key("attacker")
    pointer: Any = attacker.jwk() if name == "jwk" else "https://attacker.example/keys.json"
    for kid in (RSA.kid, attacker.kid):
        token = resign(attacker, {"alg": "RS256", "kid": kid, name: pointer}, good_claims())
        assert h.reason(token) == "malformed"


def test_unknown_critical_extension(h: Harness) -> None:
    token = resign(RSA, {"alg": "RS256", "kid": RSA.kid, "crit": ["exp"], "exp": 1}, good_claims())
    assert h.reason(token) == "malformed"


def test_expired(h: Harness) -> None:
    assert h.reason(RSA.token(good_claims(exp=int(time.time()) - 31))) == "expired"


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_not_yet_valid(h: Harness, name: str) -> None:
    assert h.reason(EC.token(good_claims(**{name: int(time.time()) + 120}))) == "not_yet_valid"


@pytest.mark.parametrize("exp", ["9999999999", 9999999999.0, True, None, [9999999999], {"v": 1}])
def test_exp_must_be_an_integer(h: Harness, exp: Any) -> None:
    claims = good_claims()
    claims["exp"] = exp
    if exp is None:
        del claims["exp"]
    assert h.reason(ED.token(claims)) == "malformed"


@pytest.mark.parametrize("value", ["tomorrow", True])
def test_nbf_and_iat_must_be_numbers(h: Harness, value: Any) -> None:
    assert h.reason(ED.token(good_claims(nbf=value))) == "malformed"
    assert h.reason(ED.token(good_claims(iat=value))) == "malformed"


@pytest.mark.parametrize("aud", ["other", ["other", "relay-admin"], [], "", 5, "RELAY"])
def test_wrong_audience(h: Harness, aud: Any) -> None:
    assert h.reason(RSA.token(good_claims(aud=aud))) == "audience"


def test_missing_audience(h: Harness) -> None:
    claims = good_claims()
    del claims["aud"]
    assert h.reason(RSA.token(claims)) == "audience"


@pytest.mark.parametrize("iss", [
    "https://idp.example.test/evil", "https://idp.example.test", "https://IDP.example.test/",
    "https://idp.example.test//", " https://idp.example.test/", "https://attacker.example/", 5, None,
])  # fmt: skip
def test_wrong_issuer_including_prefixes(h: Harness, iss: Any) -> None:
    claims = good_claims()
    claims["iss"] = iss
    if iss is None:
        del claims["iss"]
    assert h.reason(resign(RSA, {"alg": "RS256", "kid": RSA.kid}, claims)) == "issuer"


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("key", [RSA, EC, ED], ids=lambda k: k.alg)
def test_signature_stripped_truncated_or_bit_flipped(h: Harness, key: Key) -> None:
    head, body, sig = split(key.token())
    raw = b64url_decode(sig)
    assert h.reason(head + b"." + body + b".") == "bad_signature"
    assert h.reason(head + b"." + body) == "malformed"
    assert h.reason(head + b"." + body + b"." + b64url_encode(raw[:-1])) == "bad_signature"
    for bit in (0, 7, len(raw) * 4, len(raw) * 8 - 1):
        assert h.reason(head + b"." + body + b"." + b64url_encode(_flip(raw, bit))) == "bad_signature"


@pytest.mark.parametrize("key", [RSA, EC, ED], ids=lambda k: k.alg)
def test_payload_swapped_between_tokens_of_the_same_key(h: Harness, key: Key) -> None:
    head, _, sig = split(key.token(good_claims(sub="alice")))
    _, body, _ = split(key.token(good_claims(sub="mallory", groups=["admins"])))
    assert h.reason(head + b"." + body + b"." + sig) == "bad_signature"


def test_a_token_of_another_key_with_the_same_kid(h: Harness) -> None:
    for genuine, impostor in ((RSA, rsa_key("rsa-impostor")), (EC, ec_key()), (ED, ed_key())):
        twin = Key(genuine.kid, impostor.alg, impostor.private)
        assert h.reason(twin.token()) == "bad_signature"


def test_an_algorithm_outside_the_issuers_list(make: Any) -> None:
    harness = make(configs=(issuer(algorithms=("RS256",)),))
    assert harness.ok(RSA.token()).subject == "alice"
    assert harness.reason(EC.token()) == "algorithm"
    assert harness.reason(ED.token()) == "algorithm"


def test_the_key_decides_its_algorithm(make: Any) -> None:
    # the RSA JWK says alg RS256: a PS256 token from the very same private key is refused
    harness = make(configs=(issuer(algorithms=("RS256", "PS256", "ES256")),))
    assert harness.reason(RSA.token(alg="PS256")) == "algorithm"
    # an ES256 header over an RSA key's kid cannot select an EC verifier either
    assert harness.reason(resign(EC, {"alg": "ES256", "kid": RSA.kid}, good_claims())) == "algorithm"


def test_token_size_cap(make: Any) -> None:
    harness = make(configs=(issuer(max_token_bytes=1024),))
    assert harness.reason(RSA.token(good_claims(padding="x" * 1024))) == "too_large"
    assert harness.ok(ED.token()).subject == "alice"


def test_subject_and_claim_types(h: Harness) -> None:
    claims = good_claims()
    del claims["sub"]
    assert h.reason(RSA.token(claims)) == "malformed"
    assert h.reason(RSA.token(good_claims(sub=""))) == "malformed"
    assert h.reason(RSA.token(good_claims(sub=["alice"]))) == "malformed"
    assert h.reason(RSA.token(good_claims(groups=["ok", 7]))) == "malformed"
    assert h.reason(RSA.token(good_claims(scope={"a": 1}))) == "malformed"


# -- the Authorization header --------------------------------------------------------------


def test_authorization_header_forms(h: Harness) -> None:
    token = RSA.token()
    assert h.reason(None) == "missing"
    assert h.reason(b"Basic YWxpY2U6c2VjcmV0", raw=True) == "missing"
    assert h.reason(b"Bearertoken", raw=True) == "missing"
    assert h.reason(b"Bearer", raw=True) == "malformed"
    assert h.reason(b"Bearer ", raw=True) == "malformed"
    assert h.reason(b"Bearer  " + token, raw=True) == "malformed"
    assert h.reason(b"Bearer\t" + token, raw=True) == "malformed"
    assert h.reason(b"Bearer " + token + b" extra", raw=True) == "malformed"
    for scheme in (b"Bearer ", b"bearer ", b"BEARER ", b"bEaReR "):
        assert h.auth.authenticate(scheme + token, ()).subject == "alice"


# -- cache, flows' issuers, revocation -----------------------------------------------------


def test_a_repeated_token_is_a_cache_hit_returning_the_same_identity(h: Harness) -> None:
    token = EC.token()
    first = h.ok(token)
    before = h.auth.cache_stats()
    assert h.ok(bytes(bytearray(token))) is first  # equal bytes, another object
    after = h.auth.cache_stats()
    assert after["hits"] == before["hits"] + 1 and after["size"] == 1
    h.auth.purge_cache()
    assert h.auth.cache_stats()["size"] == 0
    assert h.ok(token) is not first


def test_a_failed_token_is_never_cached(h: Harness) -> None:
    token = RSA.token(good_claims(aud="other"))
    for _ in range(3):
        assert h.reason(token) == "audience"
    assert h.auth.cache_stats()["size"] == 0


def test_flow_issuers_are_checked_on_misses_and_hits(make: Any) -> None:
    other = issuer(name="other", issuer="https://other.example.test/")
    harness = make(configs=(issuer(), other))
    token = RSA.token()
    assert harness.reason(token, allowed=("other",)) == "issuer"  # miss
    assert harness.ok(token, allowed=("test",)).issuer == "test"
    assert harness.reason(token, allowed=("other",)) == "issuer"  # hit
    assert harness.ok(token, allowed=("other", "test")).issuer == "test"
    mine = RSA.token(good_claims(iss="https://other.example.test/"))
    assert harness.ok(mine).issuer == "other"


@pytest.mark.parametrize("kind, value", [("jti", "jti-1"), ("sub", "alice"), ("kid", "ec-1")])
def test_revocation_applies_to_cached_and_new_tokens(h: Harness, kind: Any, value: str) -> None:
    cached = EC.token()
    h.ok(cached)
    h.auth.revoke(kind, value, ttl=60)
    assert h.reason(cached) == "revoked"
    assert h.reason(EC.token(good_claims(exp=int(time.time()) + 900))) == "revoked"
    assert h.ok(RSA.token(good_claims(jti="jti-2", sub="bob"))).subject == "bob"
    assert [(e["kind"], e["value"]) for e in h.auth.revocations()] == [(kind, value)]


def test_revoke_refuses_nonsense(h: Harness) -> None:
    for kind, value, ttl in (("hash", "x", 60), ("jti", "", 60), ("jti", "x", 0), ("sub", "x", -1)):
        with pytest.raises(ValueError):
            h.auth.revoke(kind, value, ttl)


def test_update_re_verifies_cached_tokens_with_the_new_config(h: Harness) -> None:
    token = RSA.token()
    h.ok(token)
    assert h.auth.key_status()[0]["kids"] == ["ec-1", "ed-1", "rsa-1"]
    h.update((replace(h.configs[0], audiences=("someone-else",)),))
    assert h.reason(token) == "audience"
    assert h.auth.key_status()[0]["fetches"] == 1  # same key source: keys kept, not fetched again
    h.update((replace(h.configs[0], name="renamed"),))
    assert h.ok(token).issuer == "renamed"


def test_claims_mapping_applies(make: Any) -> None:
    okta = issuer(claims=ClaimsMapping(subject="uid", groups="groups", scopes="scp"))
    harness = make(configs=(okta,))
    identity = harness.ok(RSA.token(good_claims(uid="00u1", scp=["a", "b"], scope=None)))
    assert (identity.subject, identity.scopes) == ("00u1", ("a", "b"))


def test_without_issuers_every_token_fails_on_issuer() -> None:
    async def main() -> None:
        auth = Authenticator(())
        await auth.start()
        with pytest.raises(Unauthorized) as caught:
            auth.authenticate(bearer(RSA.token()), ())
        assert caught.value.reason == "issuer"
        await auth.close()

    asyncio.run(main())


def test_the_audience_claim_can_be_another_claim(make: Any) -> None:
    # Cognito access tokens carry the app client in "client_id" and no "aud" at all
    cognito = issuer(audiences=("app-client-1",), claims=ClaimsMapping(groups="cognito:groups", audience="client_id"))
    harness = make(configs=(cognito,))
    token = RSA.token(good_claims(aud=None, client_id="app-client-1", token_use="access"))
    assert harness.ok(token).subject == "alice"
    assert harness.reason(RSA.token(good_claims(aud=None, client_id="app-client-2"))) == "audience"
    # the mapped claim replaces "aud": a matching "aud" alone does not do
    assert harness.reason(RSA.token(good_claims(aud="app-client-1"))) == "audience"
