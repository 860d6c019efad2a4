"""relayd end to end: bodies arrive and come back byte-exact, memory stays bounded,
sink failures map to 502/504, the upstream sees cleaned headers, keep-alive and
pipelining work, and routing answers 404/405/413/501.

Three ways in: through lighttpd (which reaches relayd over its Unix socket) and
directly over TCP and Unix. The transfer tests also run lighttpd straight to the
upstream ("control"), so a failure there is the harness's, not relayd's.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from support import (SLOW_TIMEOUT, SMALL_MAX_BODY, Address, Control, RawConnection, Response, Route, Stack,
                     chunked, exchange, pattern, request_bytes, upstream_completed, upstream_gained_nothing)

KiB = 1024
MiB = 1024 * KiB
RELAY_WAYS = ["lighttpd", "tcp", "unix"]


@functools.cache
def payload(size: int) -> bytes:
    return pattern(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["control", *RELAY_WAYS])
def route(request: pytest.FixtureRequest) -> Route:
    """Each way in; the control one starts only lighttpd and the upstream."""
    if request.param == "control":
        control: Control = request.getfixturevalue("control")
        return control.route
    stack: Stack = request.getfixturevalue("stack")
    return stack.route(request.param)


@pytest.fixture(params=RELAY_WAYS)
def way(request: pytest.FixtureRequest, stack: Stack) -> Route:
    """Each way into relayd (no control)."""
    return stack.route(request.param)


def send_body(address: Address, method: str, target: str, body: bytes, framing: str) -> Response:
    """Send ``body`` with Content-Length or chunked while reading the answer."""
    head = [f"{method} {target} HTTP/1.1", "Host: relay.test"]
    head.append("Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {len(body)}")
    with RawConnection(address, timeout=60) as conn:
        conn.send(("\r\n".join(head) + "\r\n\r\n").encode())
        conn.send_in_background(chunked(body) if framing == "chunked" else [body])
        response = conn.read_response()
        conn.wait_sent()
        assert conn.send_error is None, f"request body not fully sent: {conn.send_error!r}"
    return response


def assert_error(response: Response, status: int, code: str, sink: str | None = None) -> None:
    """relayd's error answer: the status and a JSON body naming the request id it sent
    (and the sink that failed, for sink errors)."""
    assert response.status == status, str(response)
    request_id = response.get("X-Relay-Request-Id")
    assert request_id, f"no X-Relay-Request-Id on {response}"
    expected = {"error": code, "request_id": request_id}
    if sink is not None:
        expected["sink"] = sink
    assert response.json() == expected


def assert_relayed(response: Response, route: Route) -> None:
    """A relayed answer carries relayd's request id; the control route has none."""
    if route.name != "control":
        assert response.get("X-Relay-Request-Id"), f"no X-Relay-Request-Id on {response}"


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("size", [0, KiB, MiB, 64 * MiB], ids=["0B", "1KiB", "1MiB", "64MiB"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_body_arrives_and_echoes_byte_exact(route: Route, method: str, size: int, framing: str) -> None:
    body = payload(size)
    # the echo comes back with the framing the request used, so both directions see both
    target = f"/data/{unique('echo')}?body=echo" + ("&te=chunked" if framing == "chunked" else "")

    response = send_body(route.address, method, target, body, framing)

    if method == "GET" and (size or framing == "chunked") and route.name in ("control", "lighttpd"):
        # lighttpd refuses a GET with a body at the door; relayd never sees it
        assert response.status == 400, str(response)
        return
    assert response.status == 200, str(response)
    assert_relayed(response, route)
    assert (len(response.body), sha(response.body)) == (size, sha(body))
    record = route.upstream.wait_for(lambda r: r["target"] == target and "complete" in r)
    assert record["method"] == method
    assert record["complete"]
    assert (record["body_len"], record["sha256"]) == (size, sha(body))


def vm_peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_memory_stays_bounded_for_a_64mib_chunked_post(stack: Stack) -> None:
    pid = stack.relayd.service.pid
    # writing 5 resets the peak, so only this request's peak is measured
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    body = payload(64 * MiB)

    response = send_body(stack.via_lighttpd, "POST", "/data/rss?body=echo&te=chunked", body, "chunked")

    assert response.status == 200, str(response)
    assert sha(response.body) == sha(body)
    assert vm_peak_rss(pid) < 100 * MiB


@pytest.mark.parametrize("target", ["/down/x", "/data/x?fail=reset", "/data/x?fail=garbage",
                                    "/data/x?fail=close"], ids=["refused", "reset", "garbage", "closed"])
def test_failing_upstream_gives_502(way: Route, target: str) -> None:
    response = exchange(way.address, request_bytes("GET", target))
    assert_error(response, 502, "sink_failed", sink="nowhere" if target.startswith("/down/") else "up")


def test_slow_upstream_gives_504_after_the_sink_timeout(way: Route) -> None:
    started = time.monotonic()
    response = exchange(way.address, request_bytes("GET", f"/slow/{unique('late')}?delay={SLOW_TIMEOUT * 3}"))
    elapsed = time.monotonic() - started
    assert_error(response, 504, "sink_timeout", sink="quick")
    assert SLOW_TIMEOUT * 0.9 <= elapsed < SLOW_TIMEOUT + 1.0


def upstream_headers(record: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]


def test_upstream_sees_cleaned_headers(way: Route) -> None:
    target = f"/data/{unique('headers')}"
    sent = [
        ("X-Forwarded-For", "6.6.6.6, 7.7.7.7"),
        ("X-Relay-Subject", "admin"),
        ("X-Relay-Request-Id", "spoofed-id"),
        ("X-Relay-Flow", "spoofed-flow"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "hop-only"),
        ("Keep-Alive", "timeout=100"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("X-Custom", "kept"),
    ]
    response = exchange(way.address, request_bytes("GET", target, sent))
    assert response.status == 200, str(response)
    record = way.upstream.wait_for(lambda r: r["target"] == target)
    seen = {key.lower() for key, _ in record["headers"]}

    # the rightmost entry is the one lighttpd appended; a Unix peer is taken to be lighttpd
    client = "7.7.7.7" if way.name == "unix" else "127.0.0.1"
    assert upstream_headers(record, "X-Forwarded-For") == [client]
    assert upstream_headers(record, "X-Relay-Request-Id") == [response.get("X-Relay-Request-Id")]
    assert "admin" not in upstream_headers(record, "X-Relay-Subject")
    assert "spoofed-flow" not in upstream_headers(record, "X-Relay-Flow")
    hop_by_hop = {"keep-alive", "proxy-connection", "te"}
    if way.name != "lighttpd":
        # lighttpd drops the Connection header without the headers it names, so
        # behind lighttpd relayd cannot know X-Hop was meant for one hop only
        hop_by_hop.add("x-hop")
    assert not seen & hop_by_hop
    assert {v.strip().lower() for v in upstream_headers(record, "Connection")} <= {"close", "keep-alive"}
    assert upstream_headers(record, "X-Custom") == ["kept"]


def test_request_ids_are_unique(way: Route) -> None:
    ids = {exchange(way.address, request_bytes("GET", "/data/id")).get("X-Relay-Request-Id")
           for _ in range(5)}
    assert None not in ids and len(ids) == 5


def test_keep_alive(way: Route) -> None:
    with RawConnection(way.address) as conn:
        for n in (3, 5):
            conn.send(request_bytes("GET", f"/data/ka?body={n}"))
            response = conn.read_response()
            assert (response.status, response.body) == (200, payload(n))
        conn.send(request_bytes("GET", "/data/ka?body=7", [("Connection", "close")]))
        response = conn.read_response()
        assert (response.status, response.body) == (200, payload(7))
        assert conn.closed_by_peer()


# Upstream answers that arrive whole in one read are taken apart in one call (see
# relay.fastpath.whole_answer), others by httptools: both must relay the same answer.
ARRIVALS = ["whole=1", "whole=0"]
ANSWERS = [  # (the query that makes it, status, body size)
    ("body=100", 200, 100), ("body=0", 200, 0), ("status=404&body=5", 404, 5),
    ("status=201&body=3&header=X-A:%20a%20b%20%20", 201, 3),
    ("body=10&header=X-Sendfile:%2Fetc%2Fpasswd&header=X-Accel-Redirect:%2Fx&header=Keep-Alive:%20timeout=5", 200, 10),
]
#: what differs between two answers, or with how the upstream's came: one that came in
#: pieces may already stream (chunked) when its body arrives, and lighttpd offers ranges
#: of an answer whose length it knows
SET_PER_ANSWER = {"x-upstream-seq", "x-relay-request-id", "date", "content-length", "transfer-encoding",
                  "accept-ranges"}


@pytest.mark.parametrize(("query", "status", "size"), ANSWERS)
def test_an_answer_that_arrives_whole_is_relayed_as_one_that_comes_in_pieces(
        way: Route, query: str, status: int, size: int) -> None:
    def relayed(arrival: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        response = exchange(way.address, request_bytes("GET", f"/data/{unique('whole')}?{query}&{arrival}"))
        if arrival == "whole=1":
            assert response.get("Content-Length") == str(size), str(response)  # all in hand: its length kept
        return response.status, response.body, [(k.lower(), v) for k, v in response.headers
                                                  if k.lower() not in SET_PER_ANSWER]

    whole, pieces = relayed("whole=1"), relayed("whole=0")
    assert whole == pieces
    headers = whole[2]
    assert whole[:2] == (status, payload(size))
    names = {name for name, _ in headers}
    assert not names & {"x-sendfile", "x-accel-redirect", "keep-alive"}, headers
    if "header=X-A:" in query:
        assert ("x-a", "a b") in headers  # trailing spaces trimmed


def test_heads_taken_whole_and_heads_httptools_reads_take_turns_on_one_connection(way: Route) -> None:
    # relayd takes a bodiless head alone in its read in one call, and leaves the rest to
    # httptools: one connection must stay in step whichever reads each request
    whole = request_bytes("GET", "/data/turns?body=3")
    with RawConnection(way.address) as conn:
        for request, answers in [
            (whole, [3]),
            (request_bytes("POST", "/data/turns?body=echo", body=b"12345"), [5]),  # a body: httptools
            (whole, [3]),
            (whole + request_bytes("GET", "/data/turns?body=4"), [3, 4]),  # pipelined: httptools
            (request_bytes("HEAD", "/data/turns?body=6"), [0]),
            (b"GET /data/turns?body=2 HTTP/1.1\r\nHost: relay.test\r\nX-A: caf\xc3\xa9\r\n\r\n", [2]),  # obs-text
            (whole, [3]),
        ]:
            conn.send(request)
            for size in answers:
                response = conn.read_response(head_request=request.startswith(b"HEAD "))
                assert response.status == 200, str(response)
                assert len(response.body) == size, str(response)


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_an_upstream_connection_that_says_close_is_not_reused(way: Route, arrival: str) -> None:
    tag = unique("reuse")
    extras = ["", "&header=Connection:%20close", "", ""]
    with RawConnection(way.address) as conn:
        for n, extra in enumerate(extras):
            conn.send(request_bytes("GET", f"/data/{tag}-{n}?body=3&{arrival}{extra}"))
            assert conn.read_response().status == 200
    conns = [way.upstream.wait_for(lambda r, n=n: r["target"].startswith(f"/data/{tag}-{n}?"))["conn"]
             for n in range(len(extras))]
    assert conns[2] != conns[1], "a connection the upstream answered Connection: close on was used again"
    assert conns[3] == conns[2], "a clean keep-alive connection was not used again"


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_an_upstream_answer_with_bad_headers_gives_502(way: Route, arrival: str) -> None:
    response = exchange(way.address, request_bytes("GET", f"/data/x?header=Connection:%20a@b&{arrival}"))
    assert_error(response, 502, "sink_failed", sink="up")


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_pipelined_requests_answer_in_order(stack: Stack, via: str) -> None:
    requests = (request_bytes("GET", "/data/pipe-1?body=3")
                + request_bytes("POST", "/data/pipe-2?body=echo", body=b"second")
                + request_bytes("GET", "/data/pipe-3?body=5&te=chunked"))
    with RawConnection(stack.address(via)) as conn:
        conn.send(requests)
        bodies = [conn.read_response().body for _ in range(3)]
        assert bodies == [payload(3), b"second", payload(5)]
        # and the connection is still good for more
        conn.send(request_bytes("GET", "/data/pipe-4?body=2"))
        assert conn.read_response().body == payload(2)


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_many_pipelined_gets_answer_in_order(stack: Stack, via: str) -> None:
    """Bodiless requests are relayed from callbacks: each next one starts from inside the
    previous answer's completion, often on the upstream connection just given back."""
    sizes = range(1, 21)
    with RawConnection(stack.address(via)) as conn:
        conn.send(b"".join(request_bytes("GET", f"/data/many-{n}?body={n}") for n in sizes))
        assert [conn.read_response().body for _ in sizes] == [payload(n) for n in sizes]


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_pipelined_empty_chunked_body_still_ends_upstream(stack: Stack, via: str) -> None:
    """A chunked body of no bytes queued behind another request is complete before its
    turn comes; it still reaches the upstream with its last chunk, so the answer comes at
    once (without it, only when the upstream gives up waiting for the body)."""
    empty_chunked = (request_bytes("POST", "/data/empty?body=echo", [("Transfer-Encoding", "chunked")])
                     + b"".join(chunked(b"")))
    with RawConnection(stack.address(via), timeout=2.0) as conn:
        conn.send(request_bytes("GET", "/data/first?body=3") + empty_chunked)
        assert conn.read_response().body == payload(3)
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"")


@pytest.mark.parametrize(("request_", "status", "code"), [
    (request_bytes("GET", "/nowhere/x"), 404, "no_flow"),
    (request_bytes("GET", "/"), 404, "no_flow"),
    (request_bytes("DELETE", "/data/x"), 405, "method_not_allowed"),
    (request_bytes("GET", "/small/x"), 405, "method_not_allowed"),
    (request_bytes("POST", "/small/x", body=b"x" * (SMALL_MAX_BODY + 1)), 413, "body_too_large"),
], ids=["404", "404-root", "405", "405-small", "413"])
def test_routing_errors(way: Route, request_: bytes, status: int, code: str) -> None:
    mark = way.upstream.mark()
    response = exchange(way.address, request_)
    assert_error(response, status, code)
    assert upstream_gained_nothing(way.upstream, mark, way.address) == []


def test_chunked_body_over_the_limit_never_completes_upstream(way: Route) -> None:
    """A chunked body's size shows only as it streams, so the head and the first
    bytes may already be on their way; the upstream must see the request cut off."""
    mark = way.upstream.mark()
    raw = (b"POST /small/x HTTP/1.1\r\nHost: relay.test\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(chunked(b"x" * 4 * SMALL_MAX_BODY, 512)))
    response = exchange(way.address, raw)
    assert_error(response, 413, "body_too_large")
    assert upstream_completed(way.upstream, mark, way.address) == []


def test_405_lists_the_allowed_methods(way: Route) -> None:
    response = exchange(way.address, request_bytes("DELETE", "/data/x"))
    assert response.status == 405
    allowed = {m.strip() for m in (response.get("Allow") or "").split(",")}
    assert allowed == {"GET", "HEAD", "POST", "PUT"}  # HEAD goes wherever GET does


def test_unknown_method_gives_501(way: Route) -> None:
    mark = way.upstream.mark()
    response = exchange(way.address, request_bytes("BREW", "/data/x"))
    # lighttpd knows no BREW either and answers 501 itself
    if way.name == "lighttpd":
        assert response.status == 501, str(response)
    else:
        assert_error(response, 501, "not_implemented")
    assert upstream_gained_nothing(way.upstream, mark, way.address) == []
