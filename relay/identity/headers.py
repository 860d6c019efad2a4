"""The identity headers relay sends downstream with every authenticated request.

``X-Relay-Subject``, ``X-Relay-Issuer`` (the issuer's configured name) and
``X-Relay-Groups`` (comma-joined), plus ``X-Relay-Identity`` when the flow asks for a
signed identity. The caller sets ``X-Relay-Flow`` and ``X-Relay-Request-Id`` and has
removed every inbound ``X-Relay-*`` header, so these values replace, never append.

Claim values come from the identity provider and may hold anything. A value that is
not plain printable ASCII, or holds ``%`` or ``,`` (the groups separator), is sent
percent-encoded UTF-8 (RFC 3986 §2.1): a CR, LF or NUL can never reach the header
block, and a receiver that percent-decodes every value reads the original text. The
plain block is built on the first request of each identity, so on the path of every
token nobody has seen: ``identity_block`` is a fast-path job
(spec in ``relay/_fastpath_py_claims.py``).
"""

from __future__ import annotations

import time

from relay.fastpath import identity_block
from relay.identity.claims import Identity
from relay.identity.signing import IdentitySigner

__all__ = ["identity_headers"]


def identity_headers(identity: Identity, flow_name: str, signer: IdentitySigner | None) -> bytes:
    """The ``Name: value\\r\\n`` block of identity headers for one request of ``flow_name``.

    With a ``signer`` (the flow's ``identity = "signed"``) it includes X-Relay-Identity.
    The plain part is built once per identity and the signed token once per
    (identity, flow) per 30 s, so a cached identity costs a few lookups here.
    """
    block = identity.header_memo
    if block is None:
        block = identity.header_memo = identity_block(identity.subject, identity.issuer, identity.groups)
    if signer is None:
        return block
    return block + b"X-Relay-Identity: " + signer.identity_token(identity, flow_name, time.time()) + b"\r\n"
