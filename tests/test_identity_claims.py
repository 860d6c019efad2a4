"""Claim mapping (dotted paths, string-or-array values, the usual providers), allow/deny
evaluation, the identity headers sent downstream and relay's own signed identity token."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import pytest

from relay.config import ClaimsMapping, FlowConfig, Rule
from relay.errors import Forbidden
from relay.fastpath import ClaimRules
from relay.identity import FlowAuthorizer, Identity, PolicyDenied, authorize, identity_headers
from relay.identity.revocation import Revocations
from relay.identity.signing import LIFETIME, REUSE
from test_identity_support import relay_signer


def identity(claims: dict[str, Any], mapping: ClaimsMapping = ClaimsMapping()) -> Identity:
    """The identity a verified token with ``claims`` (and a good exp and aud) gives, as relay's verifier builds it."""
    rules = ClaimRules(("relay",), 0.0, audience=mapping.audience, subject=mapping.subject, groups=mapping.groups,
                       scopes=mapping.scopes)  # fmt: skip
    payload = {"exp": 2_000_000_000, "aud": "relay", **claims}
    subject, groups, scopes, jti, exp = rules.check(payload, time.time())
    return Identity(subject, "idp", groups, scopes, MappingProxyType(payload), jti, "kid-1", exp)


# -- claim mapping ---------------------------------------------------------------------------


def test_defaults_read_sub_groups_and_a_space_separated_scope() -> None:
    who = identity({"sub": "alice", "groups": ["a", "b"], "scope": "read  write\tadmin", "jti": "j"})
    assert (who.subject, who.groups, who.scopes, who.jti) == ("alice", ("a", "b"), ("read", "write", "admin"), "j")
    assert (who.issuer, who.kid, who.expires_at) == ("idp", "kid-1", 2_000_000_000)


@pytest.mark.parametrize("mapping, claims, groups, scopes", [
    # Okta: scopes in an "scp" array
    (ClaimsMapping(scopes="scp"), {"sub": "u", "scp": ["orders:write", "openid"]}, (), ("orders:write", "openid")),
    # Cognito: groups under a colon name, scopes as a string
    (ClaimsMapping(groups="cognito:groups"), {"sub": "u", "cognito:groups": ["admins"], "scope": "a b"},
     ("admins",), ("a", "b")),
    # Azure AD: app roles
    (ClaimsMapping(groups="roles", scopes="scp"), {"sub": "u", "roles": ["Reader"], "scp": "user.read"},
     ("Reader",), ("user.read",)),
    # Keycloak: nested realm roles
    (ClaimsMapping(groups="realm_access.roles"), {"sub": "u", "realm_access": {"roles": ["ops", "dev"]}},
     ("ops", "dev"), ()),
    # Auth0: a namespaced claim whose name is full of dots is found as one name first
    (ClaimsMapping(groups="https://example.com/roles"), {"sub": "u", "https://example.com/roles": ["x"]},
     ("x",), ()),
    # a single group as a string is one group, spaces and all
    (ClaimsMapping(), {"sub": "u", "groups": "Domain Users"}, ("Domain Users",), ()),
    # absent claims and missing steps are empty, not errors
    (ClaimsMapping(groups="a.b.c", scopes="nope"), {"sub": "u", "a": {"b": 3}}, (), ()),
])  # fmt: skip
def test_provider_mappings(mapping: ClaimsMapping, claims: dict[str, Any], groups: tuple[str, ...],
                           scopes: tuple[str, ...]) -> None:  # fmt: skip
    who = identity(claims, mapping)
    assert (who.groups, who.scopes) == (groups, scopes)


# -- allow / deny ------------------------------------------------------------------------------


def flow(allow: Rule = Rule(), deny: Rule = Rule()) -> FlowConfig:
    return FlowConfig(name="orders", path="/orders/", sink="api", allow=allow, deny=deny)


ALICE = identity({"sub": "alice", "groups": ["orders-writers", "staff"], "scope": "orders:write",
                  "email_verified": True, "tenant": "acme", "level": 3, "teams": ["red", "blue"]})  # fmt: skip


def allowed(who: Identity, f: FlowConfig) -> bool:
    try:
        FlowAuthorizer(f).check(who)
    except PolicyDenied as denied:
        assert isinstance(denied, Forbidden) and denied.status == 403 and denied.reason == "denied_by_policy"
        return False
    return True


@pytest.mark.parametrize("allow, expected", [
    (Rule(), True),                                                        # no allow rule: any identity
    (Rule(groups=("orders-writers",)), True),
    (Rule(groups=("admins", "staff")), True),                              # any of the values
    (Rule(groups=("admins",)), False),
    (Rule(groups=("orders-writers",), scopes=("orders:write",)), True),    # keys AND-ed
    (Rule(groups=("orders-writers",), scopes=("orders:admin",)), False),
    (Rule(subjects=("bob", "alice")), True),
    (Rule(subjects=("Alice",)), False),                                    # exact, case-sensitive
    (Rule(claims=(("tenant", ("acme",)),)), True),
    (Rule(claims=(("tenant", ("other",)),)), False),
    (Rule(claims=(("email_verified", ("true",)),)), True),                # JSON spelling of booleans
    (Rule(claims=(("level", ("3",)),)), True),
    (Rule(claims=(("teams", ("blue",)),)), True),                          # any array element
    (Rule(claims=(("missing", ("x",)),)), False),
    (Rule(groups=("staff",), claims=(("tenant", ("acme",)), ("level", ("4",)))), False),
])  # fmt: skip
def test_allow_rules(allow: Rule, expected: bool) -> None:
    assert allowed(ALICE, flow(allow=allow)) is expected


def test_deny_wins_and_needs_all_its_keys() -> None:
    allow = Rule(groups=("orders-writers",))
    assert not allowed(ALICE, flow(allow, deny=Rule(subjects=("alice",))))
    assert not allowed(ALICE, flow(allow, deny=Rule(groups=("staff",))))
    assert allowed(ALICE, flow(allow, deny=Rule(subjects=("alice",), groups=("contractors",))))
    assert not allowed(ALICE, flow(deny=Rule(claims=(("email_verified", ("true",)),))))
    assert allowed(ALICE, flow(deny=Rule(subjects=("svc-banned",))))


def test_authorize_is_the_one_off_form() -> None:
    authorize(ALICE, flow(Rule(groups=("staff",))))
    with pytest.raises(PolicyDenied, match="no allow rule"):
        authorize(ALICE, flow(Rule(groups=("admins",))))


# -- revocation entries lapse ------------------------------------------------------------------


def test_revocations_lapse_after_their_ttl() -> None:
    entries = Revocations()
    assert not entries.active
    entries.add("sub", "alice", 10, now=1000.0)
    assert entries.active and entries.match(ALICE, 1009.0) == "sub"
    assert entries.match(ALICE, 1010.0) is None
    assert entries.entries(1011.0) == [] and not entries.active


# -- identity headers --------------------------------------------------------------------------


def test_plain_headers() -> None:
    assert identity_headers(ALICE, "orders", None) == (
        b"X-Relay-Subject: alice\r\nX-Relay-Issuer: idp\r\nX-Relay-Groups: orders-writers,staff\r\n"
    )
    nobody = identity({"sub": "svc"})
    assert identity_headers(nobody, "orders", None).endswith(b"X-Relay-Groups: \r\n")


def test_a_hostile_group_cannot_add_a_header_or_a_group() -> None:
    who = identity({"sub": "alice", "groups": ["ok", "x\r\nX-Relay-Subject: root", "a,admins"]})
    block = identity_headers(who, "orders", None)
    assert block.count(b"\r\n") == 3
    assert b"X-Relay-Groups: ok,x%0D%0AX-Relay-Subject:%20root,a%2Cadmins\r\n" in block


# -- relay's own signed identity ---------------------------------------------------------------


def test_signer_creates_a_private_key_file_once(tmp_path: Path) -> None:
    path = tmp_path / "relay-identity.pem"
    first = relay_signer(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    again = relay_signer(str(path))
    assert again.kid == first.kid and again.jwks() == first.jwks()
    assert relay_signer(str(tmp_path / "other.pem")).kid != first.kid


def test_signer_refuses_a_key_that_is_not_ed25519(tmp_path: Path) -> None:
    from test_identity_support import ec_key

    path = tmp_path / "ec.pem"
    path.write_bytes(ec_key().pem())
    with pytest.raises(ValueError, match="Ed25519"):
        relay_signer(str(path))


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    # RFC 8037 A.1 private key; A.3 gives its thumbprint
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from relay.identity.jose import b64url_decode

    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(b"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"))
    path = tmp_path / "rfc8037.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    assert relay_signer(str(path)).kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_signed_identity_verifies_with_the_published_jwks(tmp_path: Path) -> None:
    signer = relay_signer(str(tmp_path / "k.pem"))
    block = identity_headers(ALICE, "orders", signer)
    lines = block.split(b"\r\n")
    assert lines[:3] == identity_headers(ALICE, "orders", None).split(b"\r\n")[:3]
    name, _, token = lines[3].partition(b": ")
    assert name == b"X-Relay-Identity"
    jwk_set = jwt.PyJWKSet.from_json(signer.jwks().decode())
    assert jwt.get_unverified_header(token)["kid"] == jwk_set.keys[0].key_id == signer.kid
    claims = jwt.decode(token, jwk_set.keys[0].key, algorithms=["EdDSA"], audience="orders", issuer="relay")
    assert (claims["sub"], claims["idp"], claims["groups"], claims["scope"]) == (
        "alice", "idp", ["orders-writers", "staff"], "orders:write")
    now = time.time()
    assert claims["exp"] - claims["iat"] == LIFETIME
    assert now - REUSE - 1 <= claims["iat"] <= now  # the window started at most REUSE seconds ago


def test_signed_identity_is_reused_within_a_window_per_flow(tmp_path: Path) -> None:
    signer = relay_signer(str(tmp_path / "k.pem"))
    start = 1_800_000_000 - 1_800_000_000 % REUSE
    first = signer.identity_token(ALICE, "orders", start + 1.5)
    assert signer.identity_token(ALICE, "orders", start + REUSE - 0.5) is first
    assert signer.identity_token(ALICE, "ingest", start + 2) != first
    later = signer.identity_token(ALICE, "orders", start + REUSE)
    assert later != first
    claims = jwt.decode(later, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (start + REUSE, start + REUSE + LIFETIME)
