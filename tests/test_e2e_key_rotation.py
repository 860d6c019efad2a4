"""relay's signing key rotating under load, through lighttpd: tokens are exchanged and used
without a pause while keys rotate every few seconds, and a relying party that fetches
relay's JWKS only when its Cache-Control max-age has run out verifies every one of them —
one relayd or a supervisor with two workers, killed with SIGKILL and started again
between two rotations. Not one token is refused, by relay or by the relying party.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from support import Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import Lighttpd
from support.rawhttp import Address
from support.stack import token_flow
from test_e2e_revocations import ask, worker_pids
from test_e2e_tokens import ACCESS, EXCHANGE, RELAY_ISS
from test_e2e_tokens import TOKENS as EXCHANGED_FLOWS
from test_identity_support import AUD, ISS, Key, ec_key, good_claims, jwks

JWKS_PATH = "/.well-known/relay-jwks.json"
#: short enough for rotations every few seconds: published 1.1 s before signing, kept 2 s after
ROTATION = """
identity_key_rotation = "4s"
identity_jwks_refresh = "1s"
"""
#: the token flows of the token endpoints' tests, with tokens that live 2 s
TOKENS = EXCHANGED_FLOWS.replace('max_token_ttl = "5m"', 'max_token_ttl = "2s"').replace(
    'max_token_ttl = "1m"', 'max_token_ttl = "2s"')


class RelyingParty:
    """A verifier of relay's tokens as a careful service would be: relay's JWKS, fetched
    through lighttpd, is kept for its max-age counted from when it was asked for (RFC 9111
    with no Date header: the response delay is its age) and never fetched sooner, not
    even for a kid it does not know; while relay cannot be reached the last keys stay."""

    def __init__(self, front: Address) -> None:
        self.front = front
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fresh_until = 0.0
        self.fetches = 0

    def _current_keys(self) -> dict[str, jwt.PyJWK]:
        asked = time.monotonic()
        if asked >= self.fresh_until:
            answer = exchange(self.front, request_bytes("GET", JWKS_PATH))
            if answer.status == 200:
                cache = dict((k.lower(), v) for k, v in answer.headers)["cache-control"]
                match = re.fullmatch(r"max-age=(\d+)", cache)
                assert match is not None, cache
                self.keys = {k.key_id: k for k in jwt.PyJWKSet.from_json(answer.body.decode()).keys if k.key_id}
                self.fresh_until = asked + int(match.group(1))
                self.fetches += 1
        return self.keys

    def refuses(self, token: str) -> str | None:
        """Why the token does not verify, or None."""
        kid = jwt.get_unverified_header(token)["kid"]
        key = self._current_keys().get(kid)
        if key is None:
            return f"kid {kid} is not in the JWKS fetched (have {sorted(self.keys)})"
        try:
            jwt.decode(token, key.key, algorithms=["EdDSA"], audience=RELAY_ISS, issuer=RELAY_ISS)
        except jwt.PyJWTError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


class Front:
    """relayd (restartable) behind lighttpd, with the rotation configuration."""

    def __init__(self, workdir: Path, upstream: Upstream, workers: int, tokens: str = TOKENS) -> None:
        self.workdir = workdir
        (workdir / "jwks.json").write_bytes(jwks(KEY))
        extra = token_flow(workdir / "jwks.json", ISS, AUD, "ES256") + tokens
        server = ROTATION + f'workers = {workers}\nidentity_key = "{workdir / "identity.pem"}"\n'
        self.text = relay_config(workdir, upstream.url, extra=extra, server=server)
        self.workers = workers
        self.starts = 0
        self.relayd = self._start()
        self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        self.address = self.lighttpd.address

    def _start(self) -> Relayd:
        self.starts += 1
        relayd = Relayd(self.workdir, self.text, name=f"relayd{self.starts}")
        if self.workers > 1:
            poll_until(lambda: len(set(worker_pids(self.workdir))) == self.workers or None, 30, "the workers")
        return relayd

    def kill_9_and_restart(self) -> None:
        self.relayd.service.send_signal(signal.SIGKILL)
        self.relayd.service.wait_exit(10)
        if self.workers > 1:  # the kernel has told them to stop: wait until they have
            poll_until(lambda: not worker_pids(self.workdir) or None, 30, "the old workers to stop")
        self.relayd = self._start()

    def close(self) -> None:
        self.lighttpd.stop()
        self.relayd.stop()


KEY: Key = ec_key("ec-rotation")


def user_token() -> str:
    claims = good_claims(sub="alice", jti="jti-alice", groups=["writers"])
    return KEY.token(claims | {"exp": claims["iat"] + 3600}).decode()


def swap(front: Address, subject: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "scope": "flow:reports"}
    answer = exchange(front, request_bytes("POST", "/oauth/token", [("Content-Type", "application/x-www-form-urlencoded")],
                                           urlencode(form).encode()))  # fmt: skip
    return answer.status, json.loads(answer.body) if answer.body else {}


def use(front: Address, token: str) -> int:
    return exchange(front, request_bytes("GET", "/reports/q", [("Authorization", "Bearer " + token)])).status


class Load:
    """Exchanges and uses without a pause; each token is used at once and again later,
    as long as it has half a second of life left (by then another key may sign)."""

    def __init__(self, front: Address, verifier: RelyingParty) -> None:
        self.front = front
        self.verifier = verifier
        self.subject = user_token()
        self.kids: list[str] = []  # the kid of every token issued, in order of first appearance
        self.held: list[tuple[str, int]] = []  # tokens to use again, with their exp
        self.failures: list[str] = []
        self.used = 0
        self.unreachable = 0  # answers of lighttpd while relayd was down (503): no verdict on a token

    def run_until(self, kids: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.kids) < kids:
            assert time.monotonic() < deadline, f"{len(self.kids)} keys seen in {timeout}s: {self.kids}"
            self._round()

    def _round(self) -> None:
        status, issued = swap(self.front, self.subject)
        if status == 503:
            self.unreachable += 1
            return
        if status != 200:
            self.failures.append(f"exchange: {status} {issued}")
            return
        token = issued["access_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        if kid not in self.kids:
            self.kids.append(kid)
        self.held.append((token, jwt.decode(token, options={"verify_signature": False})["exp"]))
        self.held = [(t, exp) for t, exp in self.held if exp - time.time() > 0.5][-20:]
        for again in {token, self.held[0][0]}:
            self._check(again)

    def _check(self, token: str) -> None:
        status = use(self.front, token)
        if status == 503:
            self.unreachable += 1
        elif status != 200:
            self.failures.append(f"relay answered {status} to a token of key {jwt.get_unverified_header(token)['kid']}")
        refusal = self.verifier.refuses(token)
        if refusal is not None:
            self.failures.append(f"the relying party refused a token: {refusal}")
        self.used += 1


@pytest.fixture(params=[1, 2], ids=["one-relayd", "two-workers"])
def front(request: pytest.FixtureRequest, tmp_path: Path, upstream: Upstream) -> Iterator[Front]:
    running = Front(tmp_path, upstream, request.param)
    yield running
    running.close()


def audit_records(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(workdir.glob("audit*.jsonl")) for line in path.read_text().splitlines()]


def test_no_token_is_refused_while_keys_rotate_and_relayd_is_killed(front: Front) -> None:
    verifier = RelyingParty(front.address)
    load = Load(front.address, verifier)
    load.run_until(kids=2, timeout=15)  # the first rotation
    front.kill_9_and_restart()
    load.run_until(kids=3, timeout=15)  # the second, by the relayd started again
    assert load.failures == [], load.failures[:5]
    assert load.used > 20 and verifier.fetches >= 2  # it saw three keys: it fetched again at least once
    own = ask(front.workdir / "admin.sock", "keys")["own"]
    states = {row["kid"]: row["state"] for row in own}
    assert states[load.kids[-1]] == "current" and states[load.kids[-2]] == "retired"
    assert all(row["alg"] == "EdDSA" and row["created"] <= row["activates"] for row in own)
    transitions = {(r["kid"], r["reason"]) for r in audit_records(front.workdir) if r.get("event") == "signing_key"}
    assert {(load.kids[1], "key_next"), (load.kids[1], "key_current"), (load.kids[0], "key_retired")} <= transitions


def test_keys_rotate_publishes_the_new_key_before_it_signs_unless_now(tmp_path: Path, upstream: Upstream) -> None:
    front = Front(tmp_path, upstream, 1)
    try:
        admin = tmp_path / "admin.sock"
        old = ask(admin, "keys")["own"]
        signing = next(row["kid"] for row in old if row["state"] == "current")
        rotated = ask(admin, "keys", "rotate")
        new = rotated["rotated"]
        row = next(row for row in rotated["own"] if row["kid"] == new)
        assert row["state"] == "next" and row["activates"] - row["created"] == pytest.approx(1.1)
        published = json.loads(exchange(front.address, request_bytes("GET", JWKS_PATH)).body)
        assert new in {k["kid"] for k in published["keys"]}
        status, issued = swap(front.address, user_token())
        assert status == 200 and jwt.get_unverified_header(issued["access_token"])["kid"] == signing
        at_once = ask(admin, "keys", "rotate", "--now")
        assert next(r for r in at_once["own"] if r["kid"] == at_once["rotated"])["state"] == "current"
        status, issued = swap(front.address, user_token())
        assert status == 200 and jwt.get_unverified_header(issued["access_token"])["kid"] == at_once["rotated"]
        assert use(front.address, issued["access_token"]) == 200
    finally:
        front.close()


def test_a_reload_that_starts_signing_gives_every_worker_the_same_keys(tmp_path: Path, upstream: Upstream) -> None:
    front = Front(tmp_path, upstream, 2, tokens="")
    try:
        assert exchange(front.address, request_bytes("GET", JWKS_PATH)).status == 404  # relay signs nothing yet
        front.relayd.config_path.write_text(front.text + TOKENS)
        assert ask(tmp_path / "admin.sock", "reload")["ok"]
        own = ask(tmp_path / "admin.sock", "keys")["own"]
        assert [row["state"] for row in own] == ["current"]
        signer = own[0]["kid"]
        published = json.loads(exchange(front.address, request_bytes("GET", JWKS_PATH)).body)
        assert [k["kid"] for k in published["keys"]] == [signer]
        for _ in range(6):  # lighttpd's connections land on either worker
            status, issued = swap(front.address, user_token())
            assert status == 200 and jwt.get_unverified_header(issued["access_token"])["kid"] == signer
            assert use(front.address, issued["access_token"]) == 200
    finally:
        front.close()


def test_with_workers_the_supervisor_audits_the_transitions_it_decides(tmp_path: Path, upstream: Upstream) -> None:
    front = Front(tmp_path, upstream, 2)
    try:
        first = next(row["kid"] for row in ask(tmp_path / "admin.sock", "keys")["own"] if row["state"] == "current")
        new = ask(tmp_path / "admin.sock", "keys", "rotate", "--now")["rotated"]
        wanted = {(first, "key_current"), (new, "key_current"), (first, "key_retired")}

        def decided() -> set[tuple[str, str]]:
            path = tmp_path / "audit.supervisor.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            return {(r["kid"], r["reason"]) for r in map(json.loads, lines) if r.get("event") == "signing_key"}

        poll_until(lambda: wanted <= decided() or None, 10, "the supervisor's audit of the rotation")
    finally:
        front.close()
