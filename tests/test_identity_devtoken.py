"""tools/devtoken mints tokens that relay's default configuration (conf/relay.toml) accepts,
and conf/keys/ holds matching private and public development keys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from relay.config import Config, load_config
from relay.errors import Unauthorized
from relay.identity import Authenticator, FlowAuthorizer, Identity, PolicyDenied
from relay.identity.jwk import parse_jwks

ROOT = Path(__file__).resolve().parent.parent
DEVTOKEN = ROOT / "tools" / "devtoken"


def devtoken(*args: str) -> bytes:
    result = subprocess.run([sys.executable, str(DEVTOKEN), *args], capture_output=True, check=True, timeout=30)
    return result.stdout.strip()


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.chdir(ROOT)  # relative paths in the file (the dev JWKS) resolve against it
    return load_config("conf/relay.toml")


def authenticate(config: Config, token: bytes) -> Identity:
    async def main() -> Identity:
        auth = Authenticator(config.issuers)
        await auth.start()
        try:
            return auth.authenticate(b"Bearer " + token, ())
        finally:
            await auth.close()

    return asyncio.run(main())


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_devtoken_is_accepted_by_the_default_configuration(config: Config, alg: str) -> None:
    who = authenticate(config, devtoken("--sub", "alice", "--groups", "ingest-writers", "--alg", alg))
    assert (who.subject, who.issuer, who.groups, who.kid) == ("alice", "dev", ("ingest-writers",), f"dev-{alg.lower()}")
    ingest = next(f for f in config.flows if f.name == "ingest")
    FlowAuthorizer(ingest).check(who)


def test_devtoken_options(config: Config) -> None:
    who = authenticate(config, devtoken("--groups", "a,b", "--groups", "c", "--scope", "orders:write",
                                        "--claim", "tenant=acme", "--claim", 'level=3', "--ttl", "2m"))  # fmt: skip
    assert (who.subject, who.groups, who.scopes) == ("dev-user", ("a", "b", "c"), ("orders:write",))
    assert who.claims["tenant"] == "acme" and who.claims["level"] == 3
    assert who.expires_at - who.claims["iat"] == 120
    ingest = next(f for f in config.flows if f.name == "ingest")
    with pytest.raises(PolicyDenied):
        FlowAuthorizer(ingest).check(who)


@pytest.mark.parametrize("args, reason", [
    (("--ttl=-2m",), "expired"),
    (("--aud", "someone-else"), "audience"),
    (("--iss", "https://idp.example.test/evil"), "issuer"),
])  # fmt: skip
def test_devtoken_can_mint_refused_tokens(config: Config, args: tuple[str, ...], reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        authenticate(config, devtoken(*args))
    assert caught.value.reason == reason


def test_devtoken_rejects_a_bad_duration() -> None:
    result = subprocess.run([sys.executable, str(DEVTOKEN), "--ttl", "soon"], capture_output=True, timeout=30)
    assert result.returncode == 2 and b"duration" in result.stderr


def test_dev_private_keys_match_the_published_jwks() -> None:
    keys_dir = ROOT / "conf" / "keys"
    published = parse_jwks((keys_dir / "dev-jwks.json").read_bytes(), "dev-jwks.json")
    assert sorted(published) == ["dev-eddsa", "dev-es256", "dev-rs256"]
    for kid, key in published.items():
        private = serialization.load_pem_private_key((keys_dir / f"{kid}.pem").read_bytes(), password=None)
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
        assert key.fingerprint[2] == der
    assert "development" in (keys_dir / "README").read_text().lower()
    assert all("d" not in jwk for jwk in json.loads((keys_dir / "dev-jwks.json").read_text())["keys"])
