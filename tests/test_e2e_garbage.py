"""Requests leave nothing for Python's cyclic garbage collector.

relayd's per-request and per-connection objects must be freed by reference counting as
each request and connection ends. Objects caught in a reference cycle linger until the
collector finds them, and every collection walks all young objects: a cycle left per
request cost relayd about a tenth of its instructions per request, and a quarter of them
behind lighttpd, where each request is a connection. relayd reports what the collector
found (``relay_gc_collected_objects``); these tests send requests down each path (relayed,
taken whole by a sink, the general path, refused, per connection through lighttpd) and
hold that figure still.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import (Lighttpd, RawConnection, Relayd, Upstream, exchange, free_port, request_bytes)

REQUESTS = 200
#: found per request at most: a cycle left per request is several objects each time
PER_REQUEST = 0.05


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.upstream = Upstream(workdir)
        self.metrics_port = free_port()
        data = workdir / "data"
        self.relayd = Relayd(workdir, f"""\
[server]
listen = ["127.0.0.1:{free_port()}", "unix:{workdir / 'relay.sock'}"]
metrics_listen = "127.0.0.1:{self.metrics_port}"

[audit]
path = "{workdir / 'audit.jsonl'}"

[sink.up]
type = "http"
url = "{self.upstream.url}"

[sink.records]
type = "file"
path = "{data / 'records.ndjson'}"

[[flow]]
name = "read"
path = "/read/"
methods = ["GET"]
auth = "none"
sink = "up"

[[flow]]
name = "ingest"
path = "/ingest/"
methods = ["POST"]
auth = "none"
sink = "records"
""")
        self.lighttpd = Lighttpd(workdir, self.relayd.unix)

    def collected(self) -> float:
        response = exchange(("127.0.0.1", self.metrics_port), request_bytes("GET", "/metrics"))
        assert response.status == 200, str(response)
        for line in response.body.decode().splitlines():
            if line.startswith("relay_gc_collected_objects "):
                return float(line.split()[1])
        raise AssertionError("relay_gc_collected_objects is not in the metrics")

    def close(self) -> None:
        self.lighttpd.stop()
        self.relayd.stop()
        self.upstream.service.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("garbage"))
    yield running
    running.close()


RECORD = json.dumps({"id": 1, "text": "grüße"}).encode() + b"\n"


def keep_alive(stack: Stack, request: bytes, status: int) -> None:
    with RawConnection(stack.relayd.tcp) as conn:
        conn.send(request * REQUESTS)
        for _ in range(REQUESTS):
            assert conn.read_response().status == status


def per_connection(stack: Stack, request: bytes, status: int) -> None:
    for _ in range(REQUESTS):
        assert exchange(stack.lighttpd.address, request).status == status


def one_each(stack: Stack, request: bytes, status: int) -> None:
    for _ in range(REQUESTS):
        assert exchange(stack.relayd.tcp, request).status == status


def held_back(stack: Stack, request: bytes, status: int) -> None:
    """Bodies sent after 100 Continue: read by the exchange's task (the general path)."""
    head, _, body = request.partition(b"\r\n\r\n")
    with RawConnection(stack.relayd.tcp) as conn:
        for _ in range(REQUESTS):
            conn.send(head + b"\r\nExpect: 100-continue\r\n\r\n")
            assert conn.read_interim() == 100
            conn.send(body)
            assert conn.read_response().status == status


GET = request_bytes("GET", "/read/x")
POST = request_bytes("POST", "/ingest/x", [("Content-Type", "application/x-ndjson")], RECORD)
CASES: dict[str, tuple[Callable[[Stack, bytes, int], None], bytes, int]] = {
    "relayed, keep-alive": (keep_alive, GET, 200),
    "relayed, a connection each through lighttpd": (per_connection, GET, 200),
    "taken whole by the sink, keep-alive": (keep_alive, POST, 200),
    "taken whole by the sink, through lighttpd": (per_connection, POST, 200),
    "the general path": (held_back, POST, 200),
    "refused: no flow": (one_each, request_bytes("GET", "/nowhere"), 404),
    "refused: no Host, the connection closed": (one_each, b"GET /read/x HTTP/1.1\r\n\r\n", 400),
    "refused: bad record": (one_each, request_bytes("POST", "/ingest/x", [], b"not json\n"), 400),
}


@pytest.mark.parametrize("case", list(CASES))
def test_requests_leave_no_reference_cycles(stack: Stack, case: str) -> None:
    send, request, status = CASES[case]
    send(stack, request, status)  # warm up: caches, pooled connections, lazily built objects
    before = stack.collected()
    send(stack, request, status)
    found = stack.collected() - before
    assert found <= PER_REQUEST * REQUESTS, f"{found:.0f} objects left in cycles by {REQUESTS} requests"
