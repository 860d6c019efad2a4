"""Fast-path job 5 in plain Python: decoding a token nobody has seen (JOSE compact form).

Nothing here trusts the token: ``parse_compact`` only proves the token is three
canonical base64url segments whose header and payload are JSON objects, and that the
header asks for nothing relay refuses to do (fetch or accept a key named by the token,
honour critical extensions). Signature and claims are checked in ``relay.identity.verify``.
The compiled twin is ``relay/_fastpath_jose.pxi``.
"""

from __future__ import annotations

import binascii
from typing import Any, NoReturn

import orjson

from relay.errors import Unauthorized

__all__ = ["Compact", "b64url_decode", "parse_compact"]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")  # by length % 4
#: Header parameters that carry or point at a key (RFC 7515 §4.1.2-4.1.6). A token must
#: never choose the key it is checked with, so a token naming one is refused outright
#: rather than silently ignored: no identity provider relay supports sends them.
_KEY_CARRYING = ("jku", "jwk", "x5u", "x5c")


class Compact:
    """A structurally valid JWS: decoded header and payload, the bytes that were signed."""

    __slots__ = ("header", "payload", "signing_input", "signature")

    def __init__(self, header: dict[str, Any], payload: dict[str, Any], signing_input: bytes,
                 signature: bytes) -> None:  # fmt: skip
        self.header = header
        self.payload = payload
        self.signing_input = signing_input
        self.signature = signature


def b64url_decode(segment: bytes) -> bytes:
    """Decode unpadded base64url; raises ValueError unless ``segment`` is canonical.

    Canonical means: only the 64 alphabet characters, no padding, and zero bits in the
    unused low bits of the last character, so each byte string has exactly one
    encoding (and a verified token has exactly one spelling for the cache to hold).
    """
    rest = len(segment) % 4
    if segment.translate(None, _ALPHABET) or rest == 1:
        raise ValueError("not canonical base64url")
    if rest and _ALPHABET.index(segment[-1]) & (0x0F if rest == 2 else 0x03):
        raise ValueError("not canonical base64url (stray low bits)")
    # binascii directly: base64.urlsafe_b64decode re-validates and copies more (~1 µs a token)
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[rest], strict_mode=True)


def _malformed(detail: str) -> NoReturn:
    raise Unauthorized(detail, reason="malformed")


def _json_object(segment: bytes, part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(b64url_decode(segment))
    except ValueError:  # orjson.JSONDecodeError is one
        _malformed(f"token {part} is not base64url JSON")
    if not isinstance(value, dict):
        _malformed(f"token {part} is not a JSON object")
    return value


def parse_compact(token: bytes) -> Compact:
    """Split and decode a compact JWS; raises Unauthorized(reason="malformed").

    The header must hold a string ``alg``; ``kid``, when present, must be a string;
    ``jku``, ``jwk``, ``x5u``, ``x5c`` and ``crit`` are refused (relay understands no
    critical extension, so RFC 7515 §4.1.11 requires rejecting any ``crit``).
    """
    parts = token.split(b".")
    if len(parts) != 3:
        _malformed(f"a signed token has 3 dot-separated parts, this one has {len(parts)}")
    head, body, sig = parts
    header = _json_object(head, "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        _malformed("token header has no 'alg'")
    if not isinstance(header.get("kid", ""), str):
        _malformed("token header 'kid' is not a string")
    for name in _KEY_CARRYING:
        if name in header:
            _malformed(f"token header names its own key ('{name}'); keys come from the issuer only")
    if "crit" in header:
        _malformed("token header lists critical extensions ('crit') relay does not implement")
    payload = _json_object(body, "payload")
    try:
        signature = b64url_decode(sig)
    except ValueError:
        _malformed("token signature is not base64url")
    return Compact(header, payload, token[: len(head) + 1 + len(body)], signature)
