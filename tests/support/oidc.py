"""A real OpenID provider for end-to-end tests: tests/oidc/provider.mjs (panva's certified
``oidc-provider`` on Node.js), installed by ``tools/install --test``.

It issues JWT access tokens by the client credentials grant; ``token(resource)`` asks it
for one as the client ``CLIENT_ID``. The resources (audiences) it knows:

    urn:relay:ingest  aud "relay", 10 min      urn:relay:short  aud "relay", 2 s
    urn:other:api     aud "other-api", 10 min

Its signing keys are kept in the test's directory, so a restart with another ``sign`` and
the old kid in ``publish`` rotates keys the way identity providers do, and one without it
retires the old key.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from .procs import ROOT, Service, free_port

PROVIDER_DIR = ROOT / "tests" / "oidc"
CLIENT_ID = "ingest-agent"
CLIENT_SECRET = "ingest-agent-secret"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def missing() -> str | None:
    """Why the provider cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (tools/install --test installs it)"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed in tests/oidc (tools/install --test installs it)"
    return None


class OpenIdProvider:
    """oidc-provider on a loopback port, signing with key ``sign`` and publishing it and
    ``publish`` in its JWKS."""

    def __init__(self, workdir: Path, sign: str, publish: tuple[str, ...] = (), port: int | None = None) -> None:
        self.port = port or free_port()
        keys = workdir / "oidc-keys"
        keys.mkdir(exist_ok=True)
        argv = ["node", str(PROVIDER_DIR / "provider.mjs"), "--port", str(self.port), "--keys", str(keys),
                "--sign", sign, "--publish", ",".join(publish)]
        self.service = Service(f"oidc-{sign}", argv, workdir / f"oidc-{sign}.log")
        self.service.wait_ready([("127.0.0.1", self.port)])

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def token(self, resource: str = "urn:relay:ingest", scope: str = "ingest:write") -> str:
        """An access token for ``resource`` by the client credentials grant (RFC 6749 §4.4)."""
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "resource": resource, "scope": scope,
        }).encode()
        with _DIRECT.open(f"{self.issuer}/token", form, timeout=10) as answer:
            issued = json.load(answer)
        assert issued["token_type"] == "Bearer", issued
        token: str = issued["access_token"]
        return token

    def stop(self) -> None:
        self.service.stop()
