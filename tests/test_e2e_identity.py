"""Identity end to end: client → lighttpd → relayd → upstream, with keys served by a real
JWKS server that rotates while requests flow.

A valid token reaches the upstream with relay's identity headers (and a signed identity
that verifies with relay's published JWKS), spoofed identity headers removed; forged
tokens get 401 and reach nothing; a rotated-out key stops working; the audit log never
holds a token.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from support import Lighttpd, Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, child_env
from test_identity_support import AUD, ISS, JwksServer, Key, ec_key, forge, good_claims, rsa_key, split

FLOWS = """
[[issuer]]
name = "idp"
issuer = "{iss}"
audiences = ["{aud}"]
jwks_url = "{jwks_url}"
algorithms = ["RS256", "ES256"]

[[flow]]
name = "secure"
path = "/secure/"
methods = ["GET", "POST"]
allow = {{ groups = ["writers"] }}
sink = "up"
headers = {{ identity = "signed" }}
"""


class IdentityStack:
    def __init__(self, workdir: Path, jwks: JwksServer) -> None:
        self.workdir = workdir
        self.upstream = Upstream(workdir)
        config = relay_config(workdir, self.upstream.url, extra=FLOWS.format(
            iss=ISS, aud=AUD, jwks_url=jwks.url()))
        config = config.replace("[server]\n", f'[server]\nidentity_key = "{workdir / "identity.pem"}"\n', 1)
        try:
            self.relayd = Relayd(workdir, config)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, part):
                getattr(self, part).stop()


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {"rsa": rsa_key("rsa-a"), "ec": ec_key("ec-a"), "rsa-next": rsa_key("rsa-b")}


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Key]) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.serve(keys["rsa"], keys["ec"])
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[IdentityStack]:
    running = IdentityStack(tmp_path_factory.mktemp("id"), jwks)
    yield running
    running.close()


def writer_claims(**overrides: Any) -> dict[str, Any]:
    return good_claims(groups=["writers"], **overrides)


def get(stack: IdentityStack, target: str, token: bytes | None, *extra: tuple[str, str]) -> Any:
    headers = [("Authorization", "Bearer " + token.decode())] if token is not None else []
    return exchange(stack.lighttpd.address, request_bytes("GET", target, [*headers, *extra]))


def reached(stack: IdentityStack, target: str) -> list[dict[str, Any]]:
    return [r for r in stack.upstream.records() if r["target"] == target]


def test_a_valid_token_reaches_the_upstream_with_relays_identity(stack: IdentityStack,
                                                                  keys: dict[str, Key]) -> None:
    target = "/secure/valid"
    response = get(stack, target, keys["rsa"].token(writer_claims()),
                   ("X-Relay-Subject", "mallory"), ("X-Forwarded-User", "mallory"), ("X-Relay-Groups", "admins"))
    assert response.status == 200, str(response)
    [record] = reached(stack, target)
    headers: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert headers["x-relay-subject"] == ["alice"]
    assert headers["x-relay-issuer"] == ["idp"]
    assert headers["x-relay-groups"] == ["writers"]
    assert headers["x-relay-flow"] == ["secure"]
    assert "x-forwarded-user" not in headers
    assert "authorization" not in headers  # not forwarded unless the flow says so

    # the signed identity verifies with the JWKS relay publishes
    published = exchange(stack.lighttpd.address, request_bytes("GET", "/.well-known/relay-jwks.json"))
    assert published.status == 200
    key = jwt.PyJWKSet.from_json(published.body.decode()).keys[0]
    claims = jwt.decode(headers["x-relay-identity"][0], key.key, algorithms=["EdDSA"], audience="secure")
    assert claims["sub"] == "alice" and claims["idp"] == "idp"


def forged_tokens(keys: dict[str, Key]) -> dict[str, bytes]:
    rsa, ec = keys["rsa"], keys["ec"]
    good = rsa.token(writer_claims())
    head, body, sig = split(good)
    flipped = bytearray(sig)
    flipped[5] ^= 0x01
    other = rsa_key("rsa-a")  # same kid, another key
    return {
        "alg-none": forge({"alg": "none", "kid": rsa.kid}, writer_claims()),
        "alg-None": forge({"alg": "None", "kid": rsa.kid}, writer_claims()),
        "hs256-with-public-key": forge({"alg": "HS256", "kid": rsa.kid}, writer_claims(), b"x" * 32),
        "expired": rsa.token(writer_claims(exp=1_000_000, iat=999_000, nbf=999_000)),
        "not-yet-valid": rsa.token(writer_claims(nbf=4_000_000_000)),
        "exp-as-string": forge({"alg": "RS256", "kid": rsa.kid}, writer_claims(exp="9999999999")),
        "wrong-audience": rsa.token(writer_claims(aud="somebody-else")),
        "wrong-issuer": rsa.token(writer_claims(iss="https://evil.example.test/")),
        "issuer-prefix": rsa.token(writer_claims(iss=ISS + "evil")),
        "signature-stripped": head + b"." + body + b".",
        "signature-flipped": head + b"." + body + b"." + bytes(flipped),
        "payload-swapped": head + b"." + split(rsa.token(writer_claims(sub="admin")))[1] + b"." + sig,
        "same-kid-other-key": other.token(writer_claims()) if other.pem() != rsa.pem() else b"x.y.z",
        "jku-header": rsa.token(writer_claims(), jku="http://127.0.0.1:1/attacker.json"),
        "unknown-kid": rsa.token(writer_claims(), kid="nope"),
        "es256-as-rs256": forge({"alg": "RS256", "kid": ec.kid}, writer_claims(), b"x" * 64),
    }


def test_forged_tokens_get_401_and_reach_nothing(stack: IdentityStack, keys: dict[str, Key]) -> None:
    for name, token in forged_tokens(keys).items():
        target = f"/secure/forged-{name}"
        response = get(stack, target, token)
        assert response.status == 401, (name, str(response))
        assert response.get("WWW-Authenticate") == 'Bearer error="invalid_token"', name
        assert reached(stack, target) == [], name


def test_missing_token_and_denied_group(stack: IdentityStack, keys: dict[str, Key]) -> None:
    assert get(stack, "/secure/anonymous", None).status == 401
    outsider = keys["rsa"].token(good_claims(groups=["readers"]))
    assert get(stack, "/secure/outsider", outsider).status == 403
    assert reached(stack, "/secure/anonymous") == reached(stack, "/secure/outsider") == []


def test_a_token_in_the_query_string_is_refused(stack: IdentityStack, keys: dict[str, Key]) -> None:
    token = keys["rsa"].token(writer_claims()).decode()
    response = exchange(stack.lighttpd.address, request_bytes("GET", f"/secure/q?access_token={token}"))
    assert response.status == 401
    assert [r for r in stack.upstream.records() if r["target"].startswith("/secure/q")] == []


def test_keys_rotate_while_requests_flow(stack: IdentityStack, jwks: JwksServer, keys: dict[str, Key]) -> None:
    old, new = keys["rsa"], keys["rsa-next"]
    old_token, new_token = old.token(writer_claims()), new.token(writer_claims(jti="next"))
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(get(stack, "/secure/steady", keys["ec"].token(writer_claims(jti="steady"))).status)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        poll_until(lambda: len(statuses) >= 5 or None, 10, "traffic to start")
        # a new key appears (an unknown kid's own refetch is rate-limited per issuer, and an
        # earlier test used it up: the refresh an operator would run picks the key up)
        jwks.serve(old, new, keys["ec"])
        refresh_keys(stack)
        assert get(stack, "/secure/new-key", new_token).status == 200
        # the old key is removed: its tokens, cached ones included, stop working at once
        assert get(stack, "/secure/old-key", old_token).status == 200
        jwks.serve(new, keys["ec"])
        refresh_keys(stack)
        assert get(stack, "/secure/old-key-gone", old_token).status == 401
        assert get(stack, "/secure/new-key-stays", new_token).status == 200
    finally:
        stop.set()
        worker.join(10)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


def refresh_keys(stack: IdentityStack) -> None:
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(stack.workdir / "admin.sock"),
                             "keys", "refresh"], capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env=child_env())
    assert result.returncode == 0, result.stderr


def test_the_audit_log_holds_no_token(stack: IdentityStack, keys: dict[str, Key]) -> None:
    token = keys["ec"].token(writer_claims(jti="audited"))  # the RSA key may have been rotated out
    assert get(stack, "/secure/audited", token).status == 200
    audit = stack.workdir / "audit.jsonl"
    poll_until(lambda: b'"jti":"audited"' in audit.read_bytes() or None, 5, "the audit record")
    text = audit.read_bytes()
    for part in split(token):
        assert part not in text


def test_metrics_count_token_cache_and_key_fetches(stack: IdentityStack, keys: dict[str, Key]) -> None:
    token = keys["ec"].token(writer_claims(jti="metered"))
    for _ in range(3):
        assert get(stack, "/secure/metered", token).status == 200
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(stack.workdir / "admin.sock"),
                             "metrics"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
    assert result.returncode == 0, result.stderr
    values = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['relay_token_cache_lookups_total{result="hit"}'] >= 2
    assert values['relay_token_cache_lookups_total{result="miss"}'] >= 1
    assert values['relay_jwks_fetches_total{issuer="idp",result="ok"}'] >= 1
    assert values['relay_sink_latency_seconds_count{sink="up"}'] >= 3
