"""relay behind lighttpd, trusting a real OpenID provider (tests/oidc: oidc-provider, found
through its discovery document): the tokens it issues by the client credentials grant are
accepted; its key rotation is followed without restarting relay; tokens for another
audience, expired ones, and ones signed by a retired key are refused; and while the
provider is down relay keeps its last good keys.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Lighttpd, Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.oidc import CLIENT_ID, OpenIdProvider, missing
from support.procs import ROOT, child_env

if (why := missing()) is not None:
    pytest.fail(why, pytrace=False)

ISSUER = """
[[issuer]]
name = "oidc"
issuer = "{issuer}"
discovery_url = "{discovery}"
audiences = ["relay"]
algorithms = ["RS256"]
refresh = "10s"
leeway = "0s"

[[flow]]
name = "ingest"
path = "/ingest/"
methods = ["GET", "POST"]
issuers = ["oidc"]
allow = {{ scopes = ["ingest:write"] }}
sink = "up"
"""


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]
    return kid


def claims_of(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


class OidcStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.provider = OpenIdProvider(workdir, "key-1")
        self.upstream = Upstream(workdir)
        config = relay_config(workdir, self.upstream.url, extra=ISSUER.format(
            issuer=self.provider.issuer, discovery=self.provider.discovery_url))
        try:
            self.relayd = Relayd(workdir, config)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        except BaseException:
            self.close()
            raise

    def restart_provider(self, sign: str, publish: tuple[str, ...] = ()) -> None:
        """The provider again, on the same port (its issuer is its URL), with other keys."""
        self.provider.stop()
        self.provider = OpenIdProvider(self.workdir, sign, publish, port=self.provider.port)

    def status(self, token: str, target: str = "/ingest/events") -> int:
        request = request_bytes("GET", target, [("Authorization", f"Bearer {token}")])
        return exchange(self.lighttpd.address, request).status

    def relayctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(self.workdir / "admin.sock"),
                               *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream", "provider"):
            if hasattr(self, part):
                getattr(self, part).stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    running = OidcStack(tmp_path_factory.mktemp("oidc"))
    yield running
    running.close()


def test_a_token_the_provider_issues_is_accepted(stack: OidcStack) -> None:
    token = stack.provider.token()
    claims = claims_of(token)
    assert claims["iss"] == stack.provider.issuer and claims["aud"] == "relay"
    target = "/ingest/accepted"
    assert stack.status(token, target) == 200
    [record] = [r for r in stack.upstream.records() if r["target"] == target]
    headers = {name.lower(): value for name, value in record["headers"]}
    assert headers["x-relay-subject"] == CLIENT_ID  # RFC 9068: the client is the subject
    assert headers["x-relay-issuer"] == "oidc"


def test_a_token_without_the_flows_scope_is_forbidden(stack: OidcStack) -> None:
    assert stack.status(stack.provider.token(scope="ingest:read")) == 403


def test_a_token_for_another_audience_is_refused(stack: OidcStack) -> None:
    token = stack.provider.token(resource="urn:other:api")
    assert claims_of(token)["aud"] == "other-api"
    assert stack.status(token) == 401


def test_an_expired_token_is_refused(stack: OidcStack) -> None:
    token = stack.provider.token(resource="urn:relay:short")
    assert stack.status(token) == 200
    expires = claims_of(token)["exp"]
    poll_until(lambda: time.time() > expires + 1 or None, 10, "the short-lived token to expire")
    assert stack.status(token) == 401


def test_relay_follows_a_key_rotation_and_survives_the_provider_being_down(stack: OidcStack) -> None:
    old = stack.provider.token()
    assert kid_of(old) == "key-1" and stack.status(old) == 200

    # the provider goes away: relay keeps the keys it has, and says the fetch failed
    stack.provider.stop()
    refresh = stack.relayctl("--json", "keys", "refresh")
    assert stack.status(old) == 200, refresh.stdout + refresh.stderr

    # it comes back signing with a new key, the old one still published (as providers
    # rotate): relay picks the new key up on its own, without a restart or a command
    stack.restart_provider("key-2", publish=("key-1",))
    new = stack.provider.token()
    assert kid_of(new) == "key-2"
    poll_until(lambda: stack.status(new) == 200 or None, 30, "relay to accept the rotated key")
    assert stack.status(old) == 200

    # the old key is retired: once relay has the provider's JWKS again, its tokens stop working
    stack.restart_provider("key-2")
    refreshed = stack.relayctl("keys", "refresh")
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert stack.status(old) == 401
    assert stack.status(new) == 200
