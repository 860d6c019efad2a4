"""The shipped configurations are valid as they stand: conf/relay.toml and every worked
example in conf/examples/ passes ``relayd check``, and the identity-provider examples
cover the providers the README names, each with the claim mapping it needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from support import relay_check
from support.procs import ROOT

CONFIGS = sorted([ROOT / "conf" / "relay.toml", *(ROOT / "conf" / "examples").glob("*.toml")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_configuration_passes_relayd_check(path: Path) -> None:
    # the files example serves var/files, which tools/run makes (var/ is the checkout's state)
    (ROOT / "var" / "files").mkdir(parents=True, exist_ok=True)
    checked = relay_check(path)
    assert checked.returncode == 0, checked.stderr
    assert "configuration ok" in checked.stdout


def test_the_identity_provider_examples_cover_the_usual_providers() -> None:
    document = tomllib.loads((ROOT / "conf" / "examples" / "identity-providers.toml").read_text())
    issuers = {entry["name"]: entry for entry in document["issuer"]}
    assert set(issuers) == {"okta", "auth0", "keycloak", "entra", "cognito", "google"}
    for entry in issuers.values():
        assert entry["discovery_url"].startswith(entry["issuer"].rstrip("/") + "/")
        assert entry["discovery_url"].endswith("/.well-known/openid-configuration")
    assert issuers["okta"]["claims"]["scopes"] == "scp"
    assert issuers["keycloak"]["claims"]["groups"] == "realm_access.roles"
    assert issuers["cognito"]["claims"]["audience"] == "client_id"
    assert issuers["cognito"]["claims"]["groups"] == "cognito:groups"
    assert issuers["entra"]["issuer"].endswith("/v2.0")
