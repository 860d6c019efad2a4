"""Identity: who is calling, and may they use this flow.

::

    Authorization: Bearer <token>
          │
          ▼
    Authenticator.authenticate ── TokenCache hit (raw token, key generation) ──┐
          │ miss                                                               │
          ▼                                                                    │
    jose.parse_compact         3 canonical base64url parts, no key-carrying    │
          │                    or critical header                              │
          ▼                                                                    │
    verify.Issuer.verify       pinned alg → key by kid (keys.IssuerKeys) →     │
          │                    signature (jwk.VerifyKey) → exp/nbf/iat/aud     │
          ▼                                                                    │
    fastpath.ClaimRules ──────────────▶ Identity ◀─────────────────────────────┘
                                          │   issuers of the flow, revocation
                                          ▼
    authz.FlowAuthorizer.check          allow / deny rules of the flow → 403
          │
          ▼
    headers.identity_headers            X-Relay-Subject/-Issuer/-Groups
                                        (+ X-Relay-Identity from signing.IdentitySigner)

Keys are read by ``fetch`` (file, URL, OIDC discovery) in a worker thread and
refreshed by one asyncio task per issuer (``keys``); requests never wait for them.

relay's own keys rotate: ``key_schedule`` (states from times), ``key_rotation`` (what the
deciding process changes), ``key_set_file`` (the file), ``key_keeper`` (deciding or
following it), ``key_ring`` (which key signs now, the JWKS), ``ed25519_key`` (key files, kids).
"""

from relay.identity.authenticator import Authenticator
from relay.identity.authz import FlowAuthorizer, PolicyDenied, authorize
from relay.identity.claims import Identity
from relay.identity.headers import identity_headers
from relay.identity.keys import KeyStatus
from relay.identity.revocation import RevocationEntry, RevocationKind
from relay.identity.signing import IdentitySigner

__all__ = [
    "Authenticator", "FlowAuthorizer", "Identity", "IdentitySigner", "KeyStatus", "PolicyDenied",
    "RevocationEntry", "RevocationKind", "authorize", "identity_headers",
]  # fmt: skip
