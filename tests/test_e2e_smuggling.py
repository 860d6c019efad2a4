"""Malformed and ambiguous requests: relayd must refuse them, close the connection
where the framing can no longer be trusted, and forward nothing to the upstream.

Every case goes directly to relayd and through lighttpd. Directly, the exact status
(and the close) is checked, and the upstream must have seen nothing, which also
covers a second request hidden inside the first. Through lighttpd, what relayd gets
depends on what lighttpd 1.4.69 does with the case at the door (``Case.front``):
it refuses it itself, forwards it for relayd to refuse (both: a 4xx and nothing at
the upstream), re-frames it into a well-formed request relayd then serves, or
starts streaming it and stops when its own chunk parser fails.

Slowloris is sent directly only: lighttpd collects a header block itself and
forwards nothing before it is complete, so relayd's header_timeout is never
what stops a slow client behind lighttpd.
"""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass

import pytest

from support import (Address, RawConnection, Response, Stack, exchange, request_bytes, upstream_completed,
                     upstream_gained_nothing)

HOST = b"Host: relay.test\r\n"
#: a complete request hidden where a confused parser would find a second one
SMUGGLED = b"GET /data/smuggled HTTP/1.1\r\n" + HOST + b"\r\n"


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    #: relayd's answer when reached directly; None means any 4xx
    status: int | None = 400
    #: whether relayd must close the connection after answering
    closes: bool = True
    #: lighttpd's part: "refuses" (it or relayd answers 4xx, nothing forwarded),
    #: "normalizes" (lighttpd re-frames it into well-formed requests relayd serves),
    #: "aborts" (lighttpd streams the head, then drops the body without answering)
    front: str = "refuses"


def post(headers: bytes, body: bytes = b"", target: bytes = b"/data/s") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


def chunked_post(chunks: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", chunks + SMUGGLED)


def get(target: bytes, headers: bytes = HOST) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"


TERMINATOR = b"0\r\n\r\n"

CASES = [
    # Content-Length and Transfer-Encoding together, either order
    Case("cl-and-te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-and-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", TERMINATOR + SMUGGLED)),
    # duplicate or malformed Content-Length
    Case("cl-duplicate-equal", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    Case("cl-duplicate-different", post(b"Content-Length: 0\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED)),
    Case("cl-list", post(b"Content-Length: 5, 5\r\n", b"hello")),
    Case("cl-plus", post(b"Content-Length: +5\r\n", b"hello")),
    Case("cl-minus", post(b"Content-Length: -5\r\n", b"hello")),
    Case("cl-hex", post(b"Content-Length: 0x5\r\n", b"hello")),
    Case("cl-trailing-garbage", post(b"Content-Length: 5abc\r\n", b"hello")),
    Case("cl-inner-space", post(b"Content-Length: 5 5\r\n", b"hello")),
    Case("cl-empty", post(b"Content-Length: \r\n", b"hello")),
    Case("cl-overflow", post(b"Content-Length: 18446744073709551621\r\n", b"hello" + SMUGGLED)),
    # Transfer-Encoding other than exactly "chunked"
    Case("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-chunked-chunked", post(b"Transfer-Encoding: chunked, chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-identity", post(b"Transfer-Encoding: identity\r\n", b"hello" + SMUGGLED)),
    Case("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity\r\n", TERMINATOR + SMUGGLED)),
    Case("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-trailing-comma", post(b"Transfer-Encoding: chunked,\r\n", TERMINATOR + SMUGGLED)),
    Case("te-vertical-tab", post(b"Transfer-Encoding: \x0bchunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-folded", post(b"Transfer-Encoding:\r\n chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-line-starts-with-space", post(b"X-A: a\r\n Transfer-Encoding: chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("te-second-header", post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                                  TERMINATOR + SMUGGLED)),
    Case("te-repeated-chunked", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                     TERMINATOR + SMUGGLED), front="normalizes"),
    # bad chunk sizes
    Case("chunk-size-not-hex", chunked_post(b"zz\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-size-negative", chunked_post(b"-5\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-size-0x", chunked_post(b"0x5\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-size-leading-space", chunked_post(b" 5\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-size-overflow", chunked_post(b"10000000000000005\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-size-empty", chunked_post(b"\r\nhello\r\n" + TERMINATOR)),
    Case("chunk-data-too-long", chunked_post(b"5\r\nhelloXX\r\n" + TERMINATOR)),
    # chunk extensions abused
    Case("chunk-ext-bare-lf", chunked_post(b"5;a\nhello\r\n" + TERMINATOR), front="normalizes"),
    Case("chunk-ext-nul", chunked_post(b"5;a=\x00\r\nhello\r\n" + TERMINATOR), front="aborts"),
    # line endings
    Case("bare-lf-everywhere", b"GET /data/s HTTP/1.1\nHost: relay.test\n\n"),
    Case("bare-lf-in-headers", post(b"X-A: a\nTransfer-Encoding: chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("bare-cr-in-headers", post(b"X-A: a\rTransfer-Encoding: chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("bare-lf-after-chunk-size", chunked_post(b"5\nhello\r\n" + TERMINATOR)),
    # header syntax
    Case("obs-fold", get(b"/data/s", HOST + b"X-A: a\r\n b\r\n"), front="normalizes"),
    Case("space-before-colon", post(b"Content-Length : 5\r\n", b"hello")),
    Case("tab-before-colon", post(b"Transfer-Encoding\t: chunked\r\n", TERMINATOR + SMUGGLED)),
    Case("nul-in-value", get(b"/data/s", HOST + b"X-A: a\x00b\r\n")),
    Case("ctl-in-value", get(b"/data/s", HOST + b"X-A: a\x01b\r\n")),
    Case("del-in-value", get(b"/data/s", HOST + b"X-A: a\x7fb\r\n")),
    # request line and Host
    Case("http-0.9", b"GET /data/s\r\n\r\n"),
    Case("missing-host", b"GET /data/s HTTP/1.1\r\n\r\n"),
    Case("duplicate-host", get(b"/data/s", HOST + b"Host: other.test\r\n")),
    Case("duplicate-authorization", get(b"/data/s", HOST + b"Authorization: Bearer a\r\n"
                                                           b"Authorization: Bearer b\r\n"),
         front="normalizes"),
    Case("connect", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
    # request-line oddities: httptools skips runs of spaces, relayd refuses them; lighttpd
    # reads a space before the version as part of the target ("/data/s%20")
    Case("two-spaces-after-method", b"GET  /data/s HTTP/1.1\r\n" + HOST + b"\r\n"),
    Case("two-spaces-before-version", b"GET /data/s  HTTP/1.1\r\n" + HOST + b"\r\n", front="normalizes"),
    Case("spaces-around-target", b"GET   /data/s   HTTP/1.1\r\n" + HOST + b"\r\n"),
    Case("tab-after-method", b"GET\t/data/s HTTP/1.1\r\n" + HOST + b"\r\n", status=501),
    Case("tab-before-version", b"GET /data/s\tHTTP/1.1\r\n" + HOST + b"\r\n"),
    Case("leading-space", b" GET /data/s HTTP/1.1\r\n" + HOST + b"\r\n", status=501),
    Case("trailing-space", b"GET /data/s HTTP/1.1 \r\n" + HOST + b"\r\n"),
    Case("blank-line-then-two-spaces", b"\r\nGET /data/sH  HTTP/1.1\r\n" + HOST + b"\r\n"),
    Case("trailing-tab", b"GET /data/s HTTP/1.1\t\r\n" + HOST + b"\r\n"),
    # HTTP/1.0 knows no chunked (RFC 9112 6.1)
    Case("http-1.0-chunked", b"POST /data/s HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
         + b"5\r\nhello\r\n" + TERMINATOR),
    Case("http-1.0-chunked-keep-alive", b"POST /data/s HTTP/1.0\r\n" + HOST + b"Connection: keep-alive\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n" + TERMINATOR + SMUGGLED),
    # Host must be host[:port]
    Case("host-list", get(b"/data/s", b"Host: a.test, b.test\r\n")),
    Case("host-list-no-space", get(b"/data/s", b"Host: a.test,b.test\r\n")),
    Case("host-space", get(b"/data/s", b"Host: a.test b.test\r\n")),
    Case("host-userinfo", get(b"/data/s", b"Host: user@evil.test\r\n")),
    Case("host-path", get(b"/data/s", b"Host: evil.test/x\r\n")),
    Case("host-backslash", get(b"/data/s", b"Host: evil.test\\x\r\n")),
    Case("host-semicolon", get(b"/data/s", b"Host: a.test;x\r\n")),
    Case("host-empty", get(b"/data/s", b"Host: \r\n")),
    Case("host-port-too-large", get(b"/data/s", b"Host: a.test:65536\r\n")),
    Case("host-port-not-digits", get(b"/data/s", b"Host: a.test:8o\r\n")),
    Case("host-port-empty", get(b"/data/s", b"Host: a.test:\r\n"), front="normalizes"),
    Case("host-ipv6-unbracketed", get(b"/data/s", b"Host: ::1\r\n")),
    Case("host-ipv6-invalid", get(b"/data/s", b"Host: [::g]\r\n")),
    Case("host-ipv6-zone", get(b"/data/s", b"Host: [fe80::1%25eth0]\r\n")),
    Case("host-ipvfuture", get(b"/data/s", b"Host: [v1.x]\r\n")),
    # an absolute-form target's authority is held to the same rule
    Case("absolute-userinfo", get(b"http://user@other.test/data/s", b"Host: other.test\r\n")),
    Case("absolute-authority-list", get(b"http://a.test,b.test/data/s", b"Host: a.test\r\n")),
    Case("absolute-empty-authority", get(b"http:///data/s")),
    # path tricks: decoded once, dot-segments resolved, encoded "/", "#", NUL and "\" refused
    Case("dotdot-encoded", get(b"/data/%2e%2e/x"), status=404, closes=False),
    Case("dotdot-raw", get(b"/data/../x"), status=404, closes=False),
    Case("dotdot-encoded-slash", get(b"/data/..%2f")),
    Case("encoded-slash-upper", get(b"/data/a%2Fb")),
    Case("encoded-slash-lower", get(b"/data/a%2fb")),
    Case("encoded-nul", get(b"/data/a%00b")),
    Case("backslash", get(b"/data/a\\b")),
    Case("encoded-backslash", get(b"/data/a%5cb")),
    Case("fragment", get(b"/data/a#b"), front="normalizes"),
    Case("encoded-hash", get(b"/data/a%23b")),
    Case("dotdot-parameter", get(b"/data/..;/x")),
    Case("dotdot-encoded-semicolon", get(b"/data/..%3b/x")),
    Case("dotdot-double-encoded", get(b"/data/%252e%252e/x")),
    # limits
    Case("headers-too-large", get(b"/data/s", HOST + b"X-Big: " + b"a" * (20 * 1024) + b"\r\n"), status=431),
]


def read_answer(address: Address, raw: bytes) -> tuple[Response, RawConnection]:
    conn = RawConnection(address)
    conn.send(raw)
    return conn.read_response(), conn


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_directly(stack: Stack, case: Case) -> None:
    mark = stack.upstream.mark()
    response, conn = read_answer(stack.direct_tcp, case.raw)
    with conn:
        if case.status is None:
            assert 400 <= response.status < 500, str(response)
        else:
            assert response.status == case.status, str(response)
        if case.closes:
            assert conn.closed_by_peer(), "connection left open after a framing error"
    assert upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp) == []


def by_front(front: str) -> list[Case]:
    return [case for case in CASES if case.front == front]


@pytest.mark.parametrize("case", by_front("refuses"), ids=lambda c: c.id)
def test_refused_through_lighttpd(stack: Stack, case: Case) -> None:
    mark = stack.upstream.mark()
    response, conn = read_answer(stack.via_lighttpd, case.raw)
    conn.close()
    # a transfer-coding lighttpd does not implement gets its 501 (RFC 9112 6.1)
    refused_by_lighttpd_as_unimplemented = (
        response.status == 501 and response.get("X-Relay-Request-Id") is None)
    assert 400 <= response.status < 500 or refused_by_lighttpd_as_unimplemented, str(response)
    assert upstream_gained_nothing(stack.upstream, mark, stack.via_lighttpd) == []


@pytest.mark.parametrize("case", by_front("normalizes"), ids=lambda c: c.id)
def test_normalized_by_lighttpd(stack: Stack, case: Case) -> None:
    """lighttpd parses these its own (lenient but unambiguous) way and sends relayd a
    well-formed request, plus any pipelined one as a request of its own; relayd
    serves them, and the upstream gets only complete, cleanly framed requests."""
    mark = stack.upstream.mark()
    with RawConnection(stack.via_lighttpd) as conn:
        conn.send(case.raw)
        # reading every answer (the hidden request is now a pipelined one) keeps
        # it from reaching the upstream during a later test
        for _ in range(case.raw.count(b" HTTP/1.1\r\n")):
            response = conn.read_response()
            assert response.status == 200, str(response)
            assert response.get("X-Relay-Request-Id"), "answered by lighttpd, not relayd"
    for record in stack.upstream.since(mark):
        assert record.get("complete"), record


@pytest.mark.parametrize("case", by_front("aborts"), ids=lambda c: c.id)
def test_aborted_by_lighttpd_never_completes_upstream(stack: Stack, case: Case) -> None:
    """lighttpd streams the head to relayd, then its chunk parser stops and it goes
    silent. When the client gives up, relayd sees the body cut short: it may have
    streamed the head onwards, but the upstream must never see a complete request."""
    mark = stack.upstream.mark()
    with RawConnection(stack.via_lighttpd) as conn:
        conn.send(case.raw)
        if conn.readable(timeout=1.0):
            response = conn.read_response()
            assert 400 <= response.status < 500, str(response)
    # the client is gone, so lighttpd drops relayd's connection and relayd the upstream's
    assert upstream_completed(stack.upstream, mark, stack.via_lighttpd) == []


@pytest.mark.parametrize("via", ["tcp", "lighttpd"])
def test_trailers_never_become_headers(stack: Stack, via: str) -> None:
    """Trailers may be dropped or passed on as trailers, never merged into the head."""
    target = "/data/trailers"
    raw = (f"POST {target} HTTP/1.1\r\n".encode() + HOST + b"Transfer-Encoding: chunked\r\n"
           b"Trailer: X-Relay-Subject, X-Smuggled\r\n\r\n"
           b"5\r\nhello\r\n0\r\nX-Relay-Subject: admin\r\nX-Smuggled: yes\r\nContent-Length: 99\r\n\r\n")
    mark = stack.upstream.mark()
    response = exchange(stack.address(via), raw)
    assert response.status in (200, 400), str(response)
    records = upstream_gained_nothing(stack.upstream, mark, stack.address(via))
    if response.status == 200:
        assert [(r["target"], r["body_len"]) for r in records] == [(target, 5)]
    for record in records:
        names = {name.lower() for name, _ in record["headers"]}
        assert not names & {"x-smuggled", "x-relay-subject"}, record
        assert ["Content-Length", "99"] not in record["headers"], record


def test_chunk_extensions_never_reach_the_upstream(stack: Stack) -> None:
    """relayd re-frames chunked bodies itself, so extensions (here 64 KiB of one) are
    dropped on the way: the upstream sees only the payload, in relayd's own chunks."""
    target = "/data/chunk-ext"
    raw = (f"POST {target} HTTP/1.1\r\n".encode() + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
           + b"5;" + b"a" * 65536 + b"\r\nhello\r\n" + TERMINATOR)
    mark = stack.upstream.mark()
    response = exchange(stack.direct_tcp, raw)
    assert response.status == 200, str(response)
    records = [r for r in stack.upstream.since(mark) if r["target"] == target]
    assert [(r["body_len"], r["sha256"]) for r in records] == [(5, hashlib.sha256(b"hello").hexdigest())]


def test_upgrade_to_websocket_is_refused(stack: Stack) -> None:
    raw = get(b"/data/ws", HOST + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    mark = stack.upstream.mark()
    response, conn = read_answer(stack.direct_tcp, raw)
    with conn:
        assert response.status == 400, str(response)
        assert conn.closed_by_peer()
    assert upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp) == []


def test_upgrade_through_lighttpd_is_never_tunnelled(stack: Stack) -> None:
    """lighttpd drops Upgrade before proxying, so relayd may serve a plain GET; what
    must never happen is a 101 or an upgrade request reaching the upstream."""
    raw = get(b"/data/ws-front", HOST + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    mark = stack.upstream.mark()
    response = exchange(stack.via_lighttpd, raw)
    assert response.status != 101, str(response)
    for record in upstream_gained_nothing(stack.upstream, mark, stack.via_lighttpd):
        headers = {name.lower(): value.lower() for name, value in record["headers"]}
        assert "upgrade" not in headers and "upgrade" not in headers.get("connection", ""), record


def test_slowloris_gets_408_and_closed(stack: Stack) -> None:
    """Headers trickling in never finish: relayd answers 408 once header_timeout (2 s)
    has passed since the request began, however steadily bytes keep arriving."""
    mark = stack.upstream.mark()
    started = time.monotonic()
    with RawConnection(stack.direct_tcp) as conn:
        conn.send(b"GET /data/slow HTTP/1.1\r\n" + HOST)
        drip = 0
        while not conn.readable(timeout=0.25):
            assert time.monotonic() - started < 6, "no answer to a never-ending header block"
            drip += 1
            conn.send(b"X-Drip-%d: x\r\n" % drip)
        answered = time.monotonic() - started
        response = conn.read_response()
        assert response.status == 408, str(response)
        assert conn.closed_by_peer()
    assert 1.8 <= answered < 3.5
    assert upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp) == []


@pytest.mark.parametrize("host", ["[::1]:8080", "[2001:db8::7]", "192.0.2.1", "a.test:65535", "A.Test",
                                  "xn--bcher-kva.test", "under_score.test"])
def test_valid_hosts_are_forwarded_as_sent(stack: Stack, host: str) -> None:
    target = "/data/host"
    mark = stack.upstream.mark()
    response = exchange(stack.direct_tcp, request_bytes("GET", target, host=host))
    assert response.status == 200, str(response)
    records = upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp)
    assert [[v for k, v in r["headers"] if k.lower() == "host"] for r in records] == [[host]]


def test_absolute_form_forwards_the_targets_authority(stack: Stack) -> None:
    """RFC 9112 3.2.2: the target's authority, not the Host header, names the origin;
    relayd routes on the target's path and forwards that authority as the Host."""
    mark = stack.upstream.mark()
    response = exchange(stack.direct_tcp, get(b"http://other.test:8080/data/absolute?q=1", b"Host: probe.test\r\n"))
    assert response.status == 200, str(response)
    records = upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp)
    assert [(r["target"], [v for k, v in r["headers"] if k.lower() == "host"]) for r in records] == [
        ("/data/absolute?q=1", ["other.test:8080"])]


def test_absolute_form_with_another_host_is_refused_by_lighttpd(stack: Stack) -> None:
    mark = stack.upstream.mark()
    response = exchange(stack.via_lighttpd, get(b"http://other.test/data/absolute", b"Host: probe.test\r\n"))
    assert response.status == 400, str(response)
    assert upstream_gained_nothing(stack.upstream, mark, stack.via_lighttpd) == []


@pytest.mark.parametrize("second", [b"GET  /data/b HTTP/1.1\r\n", b"GET /data/b  HTTP/1.1\r\n"])
@pytest.mark.parametrize("body", [b"GET /data/b HTTP/1.1\r\n\r\n", b"no newline"])
def test_pipelined_request_line_with_two_spaces_is_refused(stack: Stack, second: bytes, body: bytes) -> None:
    """The second request begins inside the read that carries the first, whose body
    may spell its line right or end without a newline: it is refused all the same, and
    the well-formed first request is served."""
    first = b"POST /data/a HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    mark = stack.upstream.mark()
    with RawConnection(stack.direct_tcp) as conn:
        conn.send(first + second + HOST + b"\r\n")
        assert conn.read_response().status == 200
        response = conn.read_response()
        assert response.status == 400, str(response)
        assert conn.closed_by_peer()
    records = upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp)
    assert [r["target"] for r in records] == ["/data/a"]


@pytest.mark.parametrize("line", [b"GET  /data/s HTTP/1.1\r\n", b"GET /data/s  HTTP/1.1\r\n", b"GET /data/s HTTP/1.1\r\n",
                                  b"\r\nGET /data/s HTTP/1.1\r\n"])
def test_request_line_sent_byte_by_byte(stack: Stack, line: bytes) -> None:
    """A head arriving in many reads is checked on the whole line."""
    mark = stack.upstream.mark()
    with RawConnection(stack.direct_tcp) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(line)):
            conn.send(line[i:i + 1])
        conn.send(HOST + b"Connection: close\r\n\r\n")
        response = conn.read_response()
    records = upstream_gained_nothing(stack.upstream, mark, stack.direct_tcp)
    if b"  " in line:
        assert response.status == 400 and records == [], str(response)
    else:
        assert response.status == 200 and [r["target"] for r in records] == ["/data/s"], str(response)
