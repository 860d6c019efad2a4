"""Public JSON Web Keys (RFC 7517/7518/8037) → ready-to-call signature verifiers.

Each usable key becomes a :class:`VerifyKey` holding one verifier per algorithm it may
check, bound once to the key's own ``cryptography`` object, so verifying a token costs
one dict lookup plus the signature maths. Keys that cannot be used safely (private
material published, another ``use`` or ``key_ops``, weak RSA, unknown types) are
skipped with a warning; a malformed document raises ValueError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from relay.identity.jose import b64url_decode

__all__ = ["MIN_RSA_BITS", "VerifyKey", "Verifier", "parse_jwk", "parse_jwks"]

log = logging.getLogger(__name__)

#: (signing input, signature) → whether the signature is valid
Verifier = Callable[[bytes, bytes], bool]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

MIN_RSA_BITS = 2048  # NIST SP 800-131A; smaller keys are refused, not merely warned about
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {  # crv → curve, coordinate bytes, its JWS alg
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
}


class VerifyKey:
    """One issuer public key. ``verifiers`` maps each JWS ``alg`` it may check to a verifier."""

    __slots__ = ("kid", "kty", "alg", "verifiers", "fingerprint")

    def __init__(self, kid: str, kty: str, alg: str | None, public: PublicKey) -> None:
        self.kid = kid
        self.kty = kty
        self.alg = alg
        verifiers = _verifiers(public)
        if alg is not None:
            # a key published for one algorithm must not verify another (RFC 7517 §4.4)
            verifiers = {a: v for a, v in verifiers.items() if a == alg}
        self.verifiers: Mapping[str, Verifier] = verifiers
        #: what the key is: a refresh that changes it for the same kid counts as a removal
        self.fingerprint = (kty, alg, public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip

    def __repr__(self) -> str:
        return f"VerifyKey(kid={self.kid!r}, kty={self.kty!r}, algs={sorted(self.verifiers)})"


def _rsa_verifiers(key: rsa.RSAPublicKey) -> dict[str, Verifier]:
    def pkcs1(digest: hashes.HashAlgorithm) -> Verifier:
        def verify(data: bytes, signature: bytes) -> bool:
            try:
                key.verify(signature, data, padding.PKCS1v15(), digest)
            except InvalidSignature:
                return False
            return True

        return verify

    def pss(digest: hashes.HashAlgorithm) -> Verifier:
        # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output
        scheme = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)

        def verify(data: bytes, signature: bytes) -> bool:
            try:
                key.verify(signature, data, scheme, digest)
            except InvalidSignature:
                return False
            return True

        return verify

    out: dict[str, Verifier] = {}
    for bits, hash_type in _HASHES.items():
        out["RS" + bits] = pkcs1(hash_type())
        out["PS" + bits] = pss(hash_type())
    return out


def _ec_verifier(key: ec.EllipticCurvePublicKey, size: int, digest: hashes.HashAlgorithm) -> Verifier:
    scheme = ec.ECDSA(digest)

    def verify(data: bytes, signature: bytes) -> bool:
        # JWS signs r || s as fixed-width big-endian integers (RFC 7518 §3.4), not DER
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s), data, scheme)
        except InvalidSignature:
            return False
        return True

    return verify


def _eddsa_verifier(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    return verify


def _verifiers(public: PublicKey) -> dict[str, Verifier]:
    if isinstance(public, rsa.RSAPublicKey):
        return _rsa_verifiers(public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        for curve, size, alg in _CURVES.values():
            if public.curve.name == curve.name:
                return {alg: _ec_verifier(public, size, _HASHES[alg[2:]]())}
        return {}
    return {"EdDSA": _eddsa_verifier(public)}


def _field(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"'{name}' is missing or not a string")
    return b64url_decode(value.encode("ascii"))


def _public_key(jwk: Mapping[str, Any]) -> PublicKey:
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_field(jwk, "n"), "big")
        e = int.from_bytes(_field(jwk, "e"), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {n.bit_length()} bits; at least {MIN_RSA_BITS} are required")
        if e < 3 or e % 2 == 0:
            raise ValueError("RSA exponent is not an odd number above 2")
        return rsa.RSAPublicNumbers(e, n).public_key()
    crv = jwk.get("crv")
    if kty == "EC" and isinstance(crv, str) and crv in _CURVES:
        curve, size, _alg = _CURVES[crv]
        x, y = _field(jwk, "x"), _field(jwk, "y")
        if len(x) != size or len(y) != size:
            raise ValueError(f"{crv} coordinates must be {size} bytes")
        # from_encoded_point also proves the point lies on the curve
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
    if kty == "OKP" and crv == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_field(jwk, "x"))
    if kty == "OKP" and crv == "Ed448":
        return ed448.Ed448PublicKey.from_public_bytes(_field(jwk, "x"))
    raise ValueError(f"unsupported key type {kty!r}" + (f" on curve {crv!r}" if crv else ""))


def parse_jwk(jwk: Mapping[str, Any]) -> VerifyKey:
    """One JWK as a verification key; raises ValueError saying why it cannot serve."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no 'kid' (tokens name their key by kid)")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"published for use {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("its key_ops do not include 'verify'")
    if any(name in jwk for name in ("d", "p", "q", "k")):
        # anyone who fetched this document holds the private key: its signatures prove nothing
        raise ValueError("private key material is published with it")
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("'alg' is not a string")
    key = VerifyKey(kid, str(jwk.get("kty")), alg, _public_key(jwk))
    if not key.verifiers:
        raise ValueError(f"'alg' {alg!r} does not fit a {key.kty} key")
    return key


def parse_jwks(document: bytes, source: str) -> dict[str, VerifyKey]:
    """The usable keys of a JWKS document by kid; ``source`` names it in log lines.

    Raises ValueError when the document is not a JWK Set or holds no usable key: the
    caller then keeps the keys it had rather than locking every token out.
    """
    try:
        data = orjson.loads(document)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWK Set (no 'keys' array)")
    keys: dict[str, VerifyKey] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            log.warning("%s: key %d is not a JSON object; skipped", source, i)
            continue
        try:
            key = parse_jwk(entry)
        except ValueError as e:
            log.warning("%s: key %d (kid %.64r) skipped: %s", source, i, entry.get("kid"), e)
            continue
        if key.kid in keys:
            log.warning("%s: kid %.64r appears twice; the first one is kept", source, key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise ValueError(f"no usable signing key among {len(entries)}")
    return keys
