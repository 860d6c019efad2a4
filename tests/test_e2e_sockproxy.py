"""The second pairing: lighttpd's mod_sockproxy (conf/lighttpd-sockproxy.conf) hands whole
client connections to relayd's Unix socket.

Client keep-alive and pipelining reach relayd (one relayd connection for a client's many
requests), bodies and tokens work as through mod_proxy, relayd itself answers malformed
requests (lighttpd does no HTTP here), and since lighttpd appends no X-Forwarded-For on
this listener, a client's own X-Forwarded-For is never believed.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import (Lighttpd, RawConnection, Relayd, Upstream, chunked, exchange, pattern, poll_until, relay_config,
                     request_bytes)
from support.stack import token_flow
from support.procs import SOCKPROXY_CONF
from test_identity_support import Key, good_claims, jwks, rsa_key

class SockproxyStack:
    """upstream ← relayd (trusting no proxy, as the pairing requires) ← lighttpd mod_sockproxy."""

    def __init__(self, workdir: Path, key: Key) -> None:
        self.workdir = workdir
        (workdir / "jwks.json").write_bytes(jwks(key))
        self.upstream = Upstream(workdir)
        config = relay_config(workdir, self.upstream.url, extra=token_flow(workdir / "jwks.json"))
        config = config.replace("[server]\n", "[server]\ntrusted_proxies = []\n", 1)
        try:
            self.relayd = Relayd(workdir, config)
            self.lighttpd = Lighttpd(workdir, self.relayd.unix, conf=SOCKPROXY_CONF)
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self.lighttpd.address

    def admin(self, cmd: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.workdir / "admin.sock"))
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            reply = sock.makefile("rb").readline()
        answer: dict[str, Any] = json.loads(reply)
        return answer

    def reached(self, target: str) -> list[dict[str, Any]]:
        return [r for r in self.upstream.records() if r["target"] == target]

    def audit_record(self, path: str) -> dict[str, Any] | None:
        lines = (self.workdir / "audit.jsonl").read_text().splitlines()
        return next((r for r in map(json.loads, lines) if r.get("path") == path), None)

    def close(self) -> None:
        for part in ("lighttpd", "relayd", "upstream"):
            if hasattr(self, part):
                getattr(self, part).stop()


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key("rsa-sockproxy")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, key: Key) -> Iterator[SockproxyStack]:
    running = SockproxyStack(tmp_path_factory.mktemp("sockproxy"), key)
    yield running
    running.close()


def test_one_client_connection_is_one_relayd_connection_for_many_requests(stack: SockproxyStack) -> None:
    def connections() -> int:
        count: int = stack.admin("status")["connections"]
        return count

    # earlier connections (readiness probes, other tests) are gone once relayd counts none
    poll_until(lambda: connections() == 0 or None, 10, "relayd to hold no client connection")
    with RawConnection(stack.address) as conn:
        for i in range(5):
            conn.send(request_bytes("GET", f"/data/keep-{i}"))
            response = conn.read_response()
            assert response.status == 200, str(response)
            assert response.get("Connection") != "close"
        # idle and open at both ends: relayd still holds it (mod_proxy's would be closed)
        assert connections() == 1
    for i in range(5):
        assert len(stack.reached(f"/data/keep-{i}")) == 1


def test_pipelined_requests_are_answered_in_order(stack: SockproxyStack) -> None:
    targets = [f"/data/pipe-{i}?body={100 + i}" for i in range(8)]
    with RawConnection(stack.address) as conn:
        conn.send(b"".join(request_bytes("GET", t) for t in targets))
        bodies = [conn.read_response().body for _ in targets]
    assert bodies == [pattern(100 + i) for i in range(8)]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_bodies_arrive_whole(stack: SockproxyStack, framing: str) -> None:
    body = pattern(3 * 1024 * 1024 + 17)
    target = f"/data/upload-{framing}"
    head = [f"POST {target} HTTP/1.1", "Host: relay.test"]
    head.append("Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {len(body)}")
    with RawConnection(stack.address, timeout=30) as conn:
        conn.send(("\r\n".join(head) + "\r\n\r\n").encode())
        conn.send_in_background(chunked(body) if framing == "chunked" else [body])
        response = conn.read_response()
        conn.wait_sent()
    assert response.status == 200, str(response)
    [record] = stack.reached(target)
    assert record["body_len"] == len(body)


def test_tokens_are_checked(stack: SockproxyStack, key: Key) -> None:
    token = key.token(good_claims(groups=["writers"])).decode()
    ok = exchange(stack.address, request_bytes("GET", "/secure/ok", [("Authorization", f"Bearer {token}")]))
    assert ok.status == 200, str(ok)
    missing = exchange(stack.address, request_bytes("GET", "/secure/missing"))
    assert missing.status == 401
    assert (missing.get("WWW-Authenticate") or "").startswith("Bearer")
    assert stack.reached("/secure/missing") == []


def test_relayd_answers_malformed_requests_itself(stack: SockproxyStack) -> None:
    response = exchange(stack.address, b"GET /data/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                                       b"Content-Length: 2\r\n\r\nxx")
    assert response.status == 400
    assert response.json()["error"] == "bad_request"  # relayd's JSON, not a lighttpd page
    assert stack.reached("/data/x") == []


def test_a_clients_own_x_forwarded_for_is_not_believed(stack: SockproxyStack) -> None:
    target = "/data/spoofed-xff"
    response = exchange(stack.address, request_bytes("GET", target, [("X-Forwarded-For", "203.0.113.66")]))
    assert response.status == 200, str(response)
    [record] = stack.reached(target)
    forwarded = [value for name, value in record["headers"] if name.lower() == "x-forwarded-for"]
    assert all("203.0.113.66" not in value for value in forwarded), forwarded
    entry = poll_until(lambda: stack.audit_record(target), 10, "the request's audit record")
    assert entry.get("client") != "203.0.113.66"
