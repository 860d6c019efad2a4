"""Token structure and keys: strict base64url, the compact pre-check (on both fast-path
implementations, plus a differential property test), JWK parsing, and the published
RFC 7515 / RFC 8037 vectors verified with relay's own verifiers."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import fastpath
from relay.errors import Unauthorized
from relay.identity.jose import b64url_decode, b64url_encode, parse_compact
from relay.identity.jwk import parse_jwk, parse_jwks
from support.impls import COMPILED, NOT_BUILT, TWIN
from test_identity_support import b64, ec_key, ed_key, forge, jwks, rsa_key, segment

# RFC 7515 A.2 (RS256) and A.3 (ES256): same payload, {"iss":"joe","exp":1300819380,...}
RFC7515_PAYLOAD = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
RFC7515_A2 = (
    "eyJhbGciOiJSUzI1NiJ9." + RFC7515_PAYLOAD + ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARN"
    "PvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUi"
    "pUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
).encode()
RFC7515_A2_KEY = {
    "kty": "RSA", "kid": "rfc7515-a2", "e": "AQAB",
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2"
         "lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBE"
         "Ma2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2P"
         "AcDTW9gb54h4FRWyuXpoQ",
}  # fmt: skip
RFC7515_A3 = (
    "eyJhbGciOiJFUzI1NiJ9." + RFC7515_PAYLOAD
    + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
).encode()
RFC7515_A3_KEY = {
    "kty": "EC", "kid": "rfc7515-a3", "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}  # fmt: skip
# RFC 8037 A.4: Ed25519 over the text "Example of Ed25519 signing"
RFC8037_A4_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_A4_SIGNATURE = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
RFC8037_KEY = {"kty": "OKP", "kid": "rfc8037", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


def reason(call: object) -> str:
    assert callable(call)
    with pytest.raises(Unauthorized) as caught:
        call()
    return caught.value.reason


# -- base64url -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"foob", bytes(range(256))])
def test_b64url_round_trips(impl: ModuleType, data: bytes) -> None:
    assert impl.b64url_decode(b64url_encode(data)) == data
    assert b"=" not in b64url_encode(data)


@pytest.mark.parametrize("bad", [
    b"Zm9v=",      # padding
    b"Zm9v+/",     # the standard alphabet, not the URL-safe one
    b"Zm 9v",      # whitespace is not skipped
    b"Zm9vY",      # a length no encoding has (4n + 1)
    b"Zm9vYf",     # stray low bits: "Zm9vYQ" is the one spelling of b"fooa"
    b"Zm9vYmF",    # ditto, 3-character tail
    b"Zm9v\x00",
])  # fmt: skip
def test_b64url_refuses_anything_but_the_canonical_spelling(impl: ModuleType, bad: bytes) -> None:
    with pytest.raises(ValueError):
        impl.b64url_decode(bad)


# -- the compact pre-check -----------------------------------------------------------------


def test_parse_compact_gives_header_payload_and_the_signed_bytes(impl: ModuleType) -> None:
    token = forge({"alg": "RS256", "kid": "k"}, {"sub": "a"}, b"sig")
    compact = impl.parse_compact(token)
    assert compact.header == {"alg": "RS256", "kid": "k"}
    assert compact.payload == {"sub": "a"}
    assert compact.signature == b"sig"
    assert compact.signing_input == token.rsplit(b".", 1)[0]


@pytest.mark.parametrize("token", [
    b"",
    b"abc",
    b"a.b",
    b"a.b.c.d",
    b"a.b.c.d.e",                                   # JWE compact: not accepted
    segment({"alg": "RS256"}) + b"..",              # empty payload is not a JSON object
    b"!!." + segment({}) + b".",                    # header not base64url
    segment(b"[1]") + b"." + segment({}) + b".",     # header not an object
    segment(b"{\"alg\":") + b"." + segment({}) + b".",  # header not JSON
    segment({"kid": "k"}) + b"." + segment({}) + b".",  # no alg
    segment({"alg": 1}) + b"." + segment({}) + b".",
    segment({"alg": "RS256", "kid": 7}) + b"." + segment({}) + b".",
    segment({"alg": "RS256"}) + b"." + segment(b"\"str\"") + b".",
    segment({"alg": "RS256"}) + b"." + segment({}) + b".sig=",
    segment({"alg": "RS256"}) + b"." + segment(b"{\"a\":\"\xff\"}") + b".",  # not UTF-8
])  # fmt: skip
def test_parse_compact_refuses_malformed_tokens(impl: ModuleType, token: bytes) -> None:
    assert reason(lambda: impl.parse_compact(token)) == "malformed"


@pytest.mark.parametrize("name", ["jku", "jwk", "x5u", "x5c", "crit"])
def test_headers_that_name_a_key_or_demand_extensions_are_refused(impl: ModuleType, name: str) -> None:
    header = {"alg": "RS256", "kid": "k", name: ["b64"] if name == "crit" else "https://attacker.example/k"}
    with pytest.raises(Unauthorized) as caught:
        impl.parse_compact(forge(header, {"sub": "a"}, b"s"))
    assert caught.value.reason == "malformed"
    assert name in caught.value.detail


def test_relay_decodes_tokens_with_the_implementation_relay_fastpath_chose() -> None:
    chosen = COMPILED if fastpath.COMPILED else TWIN
    assert chosen is not None
    assert (parse_compact, b64url_decode) == (chosen.parse_compact, chosen.b64url_decode)


# -- the two implementations agree -----------------------------------------------------------

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# segments: canonical encodings of JSON (objects and not), of any bytes, and near misses
# (other characters, any length) that only a strict decoder refuses
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_HEADERS = st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from(["RS256", "ES256", 7]), "kid": st.sampled_from(["k", 1, None]),
                  "jwk": st.just("x"), "crit": st.just(["b64"]), "typ": st.just("JWT")})  # fmt: skip
_SEGMENTS = st.one_of(
    _HEADERS.map(segment),
    _JSON.map(lambda v: segment(json.dumps(v).encode())),
    st.binary(max_size=40).map(lambda b: b64(b).encode()),
    st.text(_B64URL + "=+/. \x00\xff", max_size=12).map(lambda t: t.encode("utf-8")),
)
_TOKENS = st.one_of(
    st.lists(_SEGMENTS, min_size=1, max_size=5).map(b".".join),
    st.binary(max_size=60),
)


def _outcome(impl: ModuleType, token: bytes) -> object:
    try:
        compact = impl.parse_compact(token)
    except Unauthorized as refused:
        return ("refused", refused.reason, refused.detail)
    return (compact.header, compact.payload, compact.signing_input, compact.signature)


def _decoded(impl: ModuleType, segment: bytes) -> object:
    try:
        return impl.b64url_decode(segment)
    except ValueError as refused:
        return ("refused", str(refused))


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=1500, deadline=None)
@given(token=_TOKENS)
def test_compiled_and_twin_parse_alike(token: bytes) -> None:
    assert _outcome(COMPILED, token) == _outcome(TWIN, token)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=1500, deadline=None)
@given(segment=st.one_of(_SEGMENTS, st.binary(max_size=24)))
def test_compiled_and_twin_decode_base64url_alike(segment: bytes) -> None:
    assert _decoded(COMPILED, segment) == _decoded(TWIN, segment)


# -- JWKs ----------------------------------------------------------------------------------


def test_each_key_type_verifies_only_its_algorithms() -> None:
    assert sorted(parse_jwk(rsa_key(alg="RS256").jwk(alg=None)).verifiers) == [
        "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"]  # fmt: skip
    assert sorted(parse_jwk(rsa_key().jwk()).verifiers) == ["RS256"]  # the JWK's alg narrows it
    assert sorted(parse_jwk(ec_key().jwk(alg=None)).verifiers) == ["ES256"]
    assert sorted(parse_jwk(ec_key(alg="ES384").jwk(alg=None)).verifiers) == ["ES384"]
    assert sorted(parse_jwk(ed_key().jwk(alg=None)).verifiers) == ["EdDSA"]


@pytest.mark.parametrize("change, why", [
    ({"use": "enc"}, "use"),
    ({"key_ops": ["encrypt"]}, "key_ops"),
    ({"key_ops": "verify"}, "key_ops"),
    ({"kid": None}, "kid"),
    ({"kid": ""}, "kid"),
    ({"alg": "RS256"}, "does not fit"),
    ({"alg": 5}, "alg"),
    ({"kty": "oct", "k": "c2VjcmV0"}, "private"),
    ({"kty": "RSA"}, "'n'"),
    ({"crv": "P-521"}, "unsupported"),
    ({"x": b64(b"\x01" * 32)}, "Invalid EC key"),  # not a point on the curve
    ({"y": b64(b"\x01" * 31)}, "32 bytes"),
])  # fmt: skip
def test_unusable_ec_keys_are_refused_with_the_reason(change: dict[str, object], why: str) -> None:
    jwk = {k: v for k, v in {**ec_key().jwk(), **change}.items() if v is not None}
    with pytest.raises(ValueError, match=why):
        parse_jwk(jwk)


def test_published_private_material_and_weak_rsa_are_refused() -> None:
    key = rsa_key()
    numbers = key.private.private_numbers()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="private"):
        parse_jwk(key.jwk(d=b64(numbers.d.to_bytes(256, "big"))))
    weak = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": "weak", "n": b64(weak.n.to_bytes(128, "big")), "e": "AQAB"}
    with pytest.raises(ValueError, match="2048"):
        parse_jwk(jwk)


def test_key_ops_with_verify_is_accepted() -> None:
    assert parse_jwk(ed_key().jwk(key_ops=["verify"])).verifiers


def test_jwks_skips_bad_keys_keeps_the_first_of_a_duplicate_kid_and_needs_one_good_key() -> None:
    a, b = ec_key("same"), ec_key("same")
    keys = parse_jwks(jwks(a, b, {"kty": "EC"}, ed_key("ed")), "test")
    assert sorted(keys) == ["ed", "same"]
    assert keys["same"].fingerprint == parse_jwk(a.jwk()).fingerprint
    for document in (b"", b"[]", b'{"keys": {}}', jwks(), jwks({"kty": "EC", "kid": "x"})):
        with pytest.raises(ValueError):
            parse_jwks(document, "test")


# -- published vectors ---------------------------------------------------------------------


def _verify(jwk: dict[str, str], alg: str, token: bytes) -> bool:
    signing_input, _, signature = token.rpartition(b".")
    return parse_jwk(jwk).verifiers[alg](signing_input, b64url_decode(signature))


def test_rfc7515_a2_rs256_vector_verifies_with_its_key_only() -> None:
    assert _verify(RFC7515_A2_KEY, "RS256", RFC7515_A2)
    assert not _verify(rsa_key().jwk(alg=None), "RS256", RFC7515_A2)
    assert parse_compact(RFC7515_A2).payload["iss"] == "joe"


def test_rfc7515_a3_es256_vector_verifies_with_its_key_only() -> None:
    assert _verify(RFC7515_A3_KEY, "ES256", RFC7515_A3)
    assert not _verify(ec_key().jwk(alg=None), "ES256", RFC7515_A3)
    # ECDSA is randomized; swapping r and s must not verify
    head, _, sig = RFC7515_A3.rpartition(b".")
    raw = b64url_decode(sig)
    assert not _verify(RFC7515_A3_KEY, "ES256", head + b"." + b64url_encode(raw[32:] + raw[:32]))


def test_rfc8037_a4_eddsa_vector_verifies_with_its_key_only() -> None:
    signature = b64url_decode(RFC8037_A4_SIGNATURE.encode())
    assert parse_jwk(RFC8037_KEY).verifiers["EdDSA"](RFC8037_A4_INPUT, signature)
    assert not parse_jwk(ed_key().jwk()).verifiers["EdDSA"](RFC8037_A4_INPUT, signature)
    assert not parse_jwk(RFC8037_KEY).verifiers["EdDSA"](RFC8037_A4_INPUT + b"x", signature)


def test_ecdsa_signature_of_the_wrong_width_is_refused_before_maths() -> None:
    key = ec_key()
    token = key.token()
    signing_input, _, sig = token.rpartition(b".")
    raw = b64url_decode(sig)
    verify = parse_jwk(key.jwk()).verifiers["ES256"]
    assert verify(signing_input, raw)
    assert not verify(signing_input, raw[:-1])
    assert not verify(signing_input, b"\x00" + raw)
    assert not verify(signing_input, raw + raw)


def test_rfc7515_payload_is_what_the_rfc_says() -> None:
    assert json.loads(b64url_decode(RFC7515_PAYLOAD.encode()))["exp"] == 1300819380
