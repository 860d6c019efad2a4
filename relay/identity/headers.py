"""The identity headers relay sends downstream with every authenticated request.

``X-Relay-Subject``, ``X-Relay-Issuer`` (the issuer's configured name) and
``X-Relay-Groups`` (comma-joined), plus ``X-Relay-Identity`` when the flow asks for a
signed identity. The caller sets ``X-Relay-Flow`` and ``X-Relay-Request-Id`` and has
removed every inbound ``X-Relay-*`` header, so these values replace, never append.

Claim values come from the identity provider and may hold anything. A value that is
not plain printable ASCII, or holds ``%`` or ``,`` (the groups separator), is sent
percent-encoded UTF-8 (RFC 3986 §2.1): a CR, LF or NUL can never reach the header
block, and a receiver that percent-decodes every value reads the original text.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

from relay.identity.claims import Identity
from relay.identity.signing import IdentitySigner

__all__ = ["header_value", "identity_headers"]

# printable ASCII except "%" and ",", single spaces inside (edge spaces would be trimmed)
_PLAIN = re.compile(r"[!-$&-+\--~]+(?: [!-$&-+\--~]+)*")
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


def header_value(text: str) -> bytes:
    """``text`` as a safe header value: itself when plain, else percent-encoded UTF-8."""
    if _PLAIN.fullmatch(text):
        return text.encode("ascii")
    return quote(text, safe=_SAFE).encode("ascii")


def _plain_block(identity: Identity) -> bytes:
    return b"".join((
        b"X-Relay-Subject: ", header_value(identity.subject), b"\r\n",
        b"X-Relay-Issuer: ", header_value(identity.issuer), b"\r\n",
        b"X-Relay-Groups: ", b",".join(header_value(g) for g in identity.groups), b"\r\n",
    ))  # fmt: skip


def identity_headers(identity: Identity, flow_name: str, signer: IdentitySigner | None) -> bytes:
    """The ``Name: value\\r\\n`` block of identity headers for one request of ``flow_name``.

    With a ``signer`` (the flow's ``identity = "signed"``) it includes X-Relay-Identity.
    The plain part is built once per identity and the signed token once per
    (identity, flow) per 30 s, so a cached identity costs a few lookups here.
    """
    block = identity.header_memo
    if block is None:
        block = identity.header_memo = _plain_block(identity)
    if signer is None:
        return block
    return block + b"X-Relay-Identity: " + signer.identity_token(identity, flow_name, time.time()) + b"\r\n"
