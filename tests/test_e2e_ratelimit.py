"""Rate limits end to end, through lighttpd: of a fast run of requests exactly the burst
is relayed and the rest are answered 429 with Retry-After and the RateLimit fields, each
with its audit record naming the limit; clients (as lighttpd forwards them) and token
subjects are counted apart, each group of callers together; a refused upload is answered without relay reading its body.

The limits are hourly, so no token refills while a test runs and every count is exact.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from support import RawConnection, Response, Stack, exchange, request_bytes
from test_e2e_refusals import audited
from test_identity_support import AUD, ISS, ec_key, good_claims, jwks

LIMITED = """
[[flow]]
name = "limited"
path = "/limited/"
methods = ["GET", "POST"]
auth = "none"
sink = "up"
rate_limit = { per = "flow", rate = "3600/h", burst = 5 }

[[flow]]
name = "per-client"
path = "/per-client/"
methods = ["GET"]
auth = "none"
sink = "up"
rate_limit = [{ per = "client", rate = "10/h", burst = 2 }, { name = "all", per = "flow", rate = "10/h", burst = 3 }]

[[issuer]]
name = "idp"
issuer = "ISSUER"
audiences = ["AUDIENCE"]
jwks_file = "JWKS"
algorithms = ["ES256"]

[[flow]]
name = "per-caller"
path = "/per-caller/"
methods = ["GET"]
allow = { groups = ["writers", "readers"] }
sink = "up"
rate_limit = [{ per = "subject", rate = "10/h", burst = 2 }, { per = "group", rate = "10/h", burst = 3 }]
"""
KEY = ec_key("ec-ratelimit")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ratelimit")
    (workdir / "jwks.json").write_bytes(jwks(KEY))
    extra = LIMITED.replace("ISSUER", ISS).replace("AUDIENCE", AUD).replace("JWKS", str(workdir / "jwks.json"))
    running = Stack(workdir, extra=extra)
    yield running
    running.close()


def token(subject: str, group: str) -> str:
    claims = good_claims(sub=subject, groups=[group], exp=good_claims()["iat"] + 3600)
    return KEY.token(claims).decode("ascii")


def get_from(stack: Stack, path: str, source: str = "127.0.0.1") -> Response:
    """A GET through lighttpd from the loopback address ``source``."""
    host, port = stack.via_lighttpd
    assert isinstance(host, str) and isinstance(port, int)
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(request_bytes("GET", path))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return Response("HTTP/1.1", int(status_line.split()[1]), "", list(fields.items()), body)


def test_exactly_the_burst_is_relayed_and_the_rest_refused_with_the_ratelimit_fields(stack: Stack) -> None:
    answers = [exchange(stack.via_lighttpd, request_bytes("GET", f"/limited/{i}")) for i in range(12)]
    assert [a.status for a in answers] == [200] * 5 + [429] * 7
    refused = answers[-1]
    assert refused.get("Retry-After") == "1"
    assert refused.get("RateLimit-Policy") == '"flow";q=3600;w=3600'
    assert refused.get("RateLimit") == '"flow";r=0;t=1'
    request_id = str(refused.get("X-Relay-Request-Id"))
    assert refused.json() == {"error": "rate_limited", "detail": "rate limit 'flow' exceeded: retry in 1 s",
                              "request_id": request_id}
    record = audited(stack.workdir, request_id)
    assert (record["status"], record["reason"], record["flow"]) == (429, "rate_limited", "limited")
    assert "'flow'" in record["detail"]


def test_clients_are_counted_apart_and_the_flow_limit_over_all_of_them(stack: Stack) -> None:
    first = [get_from(stack, "/per-client/x", "127.0.0.1").status for _ in range(3)]
    assert first == [200, 200, 429]
    assert get_from(stack, "/per-client/x", "127.0.0.1").get("RateLimit-Policy") == '"client";q=10;w=3600'
    second = [get_from(stack, "/per-client/x", "127.0.0.2") for _ in range(2)]
    assert [a.status for a in second] == [200, 429]  # its own client bucket, then the flow's 3 are spent
    assert second[1].get("RateLimit-Policy") == '"all";q=10;w=3600'


def test_a_refused_upload_is_answered_without_its_body_being_read(stack: Stack) -> None:
    for i in range(5):  # spend whatever the burst still holds
        exchange(stack.direct_tcp, request_bytes("GET", f"/limited/spend-{i}"))
    with RawConnection(stack.direct_tcp, 10) as conn:
        conn.send(b"POST /limited/upload HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 33554432\r\n\r\n")
        conn.send(b"x" * 65536)  # a sliver of the announced 32 MiB: the answer must not wait for the rest
        answer = conn.read_response()
        assert answer.status == 429 and answer.json()["error"] == "rate_limited"
        # the rest of the body is never read: relay ends its side, as for any refused upload
        assert conn.sock.recv(1) == b""


def test_subjects_are_counted_apart_within_their_groups_limit(stack: Stack) -> None:
    def get(subject: str, group: str) -> int:
        auth = [("Authorization", f"Bearer {token(subject, group)}")]
        return exchange(stack.via_lighttpd, request_bytes("GET", "/per-caller/x", auth)).status

    assert [get("ann", "writers") for _ in range(3)] == [200, 200, 429]  # ann's own burst of 2
    assert [get("bob", "writers") for _ in range(2)] == [200, 429]  # the writers' 3 are spent
    assert [get("cat", "readers") for _ in range(3)] == [200, 200, 429]  # another group, cat's own 2
