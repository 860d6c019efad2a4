"""JOSE compact serialization: strict base64url and the structural pre-check of a JWS.

Decoding a token is on the request path (every token nobody has seen yet), so it is a
fast-path job: ``parse_compact``, ``Compact`` and ``b64url_decode`` come from
``relay.fastpath``, whose pure-Python twin ``relay/_fastpath_py_jose.py`` is the spec.
Encoding is only done when relay signs, and stays here.
"""

from __future__ import annotations

import base64

from relay.fastpath import Compact, b64url_decode, parse_compact

__all__ = ["Compact", "b64url_decode", "b64url_encode", "parse_compact"]


def b64url_encode(data: bytes) -> bytes:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")
