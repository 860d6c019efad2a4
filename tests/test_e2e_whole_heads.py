"""relayd with its compiled fast path answers every head, and relays every answer, as its twin does.

Compiled, relayd takes a bodiless head that came whole in the plainest form in one call
(relay.fastpath.whole_request) and an upstream's plain whole answer likewise; its twin
reads every message with httptools. Two relayds on one policy and one upstream, one of
each, get the same bytes: odd, hostile and mangled heads, each on a connection of its
own followed by a plain GET on the same connection. Both must give the same status and
error code to the head, and the same answer to the GET after it (or both close). Then
the same for upstream answers: odd and mangled ones from a canned upstream must reach
the client alike (status, headers, body, or the same 502).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import RawConnection, Relayd, relay_config
from support.impls import COMPILED, NOT_BUILT
from support.procs import Upstream
from support.rawhttp import ConnectionClosed

pytestmark = pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)

PLAIN = b"GET /data/plain?body=3 HTTP/1.1\r\nHost: relay.test\r\n\r\n"
BASE = (b"GET /data/base?body=5 HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: t/1\r\n"
        b"Authorization: Bearer abc.def.ghi\r\nX-Forwarded-For: 192.0.2.7\r\nAccept: */*\r\n\r\n")
ODD = [
    BASE,
    b"HEAD /data/h?body=4 HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nUpgrade: h2c\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nHost: other.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\n\r\n",
    b"GET /data/a HTTP/1.0\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 0\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nX-A: caf\xc3\xa9\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nX-A: 1\r\n 2\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost : relay.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nX_Relay_Subject: admin\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nX-Relay-Subject: admin\r\n\r\n",
    b"GET /data/../../etc/passwd HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/%2e%2e/x HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a;jsessionid=1 HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a?access_token=x HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET http://relay.test/data/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET http://other.test/data/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"HEAD /nowhere HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /small/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nExpect: 100-continue\r\n\r\n",
    b"GET /data/a HTTP/1.1\r\nHost: relay.test\r\nX-A: " + b"v" * 20000 + b"\r\n\r\n",  # over max_header_bytes
    b"GET  /data/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a  HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"get /data/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"BREW /data/a HTTP/1.1\r\nHost: relay.test\r\n\r\n",
    b"GET /data/a HTTP/1.1\nHost: relay.test\n\n",
    PLAIN + PLAIN,
]
#: bytes that, put anywhere, make a head odd in every way a parser can disagree about
MANGLERS = [b"\x00", b"\r", b"\n", b" ", b"\t", b":", b",", b"\x7f", b"\x80", b"\xff", b"%", b"/", b"_"]
MANGLED = 250


def mangled(message: bytes, seed: int) -> list[bytes]:
    """MANGLED copies of ``message``, each with one to three of MANGLERS put in or in place
    of bytes of its head, before the CRLF CRLF that ends it (a head left unended would only
    wait for a timeout)."""
    rng = random.Random(seed)
    head, _, body = message.partition(b"\r\n\r\n")
    copies = []
    for _ in range(MANGLED):
        mangled_head = bytearray(head)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(mangled_head))
            mangled_head[at:at + rng.randint(0, 1)] = rng.choice(MANGLERS)
        copies.append(bytes(mangled_head) + b"\r\n\r\n" + body)
    return copies


@contextlib.contextmanager
def compiled_and_twin(tmp_path_factory: pytest.TempPathFactory, upstream_url: str) -> Iterator[tuple[Relayd, Relayd]]:
    """A compiled relayd and its twin, one policy, one upstream."""
    both = []
    try:
        for name, forced in (("compiled", ""), ("twin", "1")):
            workdir: Path = tmp_path_factory.mktemp(name)
            both.append(Relayd(workdir, relay_config(workdir, upstream_url), extra_env={"RELAY_NO_EXTENSIONS": forced}))
        yield both[0], both[1]
    finally:
        for running in both:
            running.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[tuple[Relayd, Relayd]]:
    with compiled_and_twin(tmp_path_factory, upstream.url) as both:
        yield both


def answers(relayd: Relayd, head: bytes) -> list[tuple[object, ...]]:
    """What relayd answers ``head`` and then a plain GET on the same connection: for each,
    the status and error code, or "closed"."""
    seen: list[tuple[object, ...]] = []
    with RawConnection(relayd.tcp, timeout=10) as conn:
        conn.send(head)
        try:
            for request in (head, PLAIN):
                response = conn.read_response(head_request=request.startswith(b"HEAD "))
                code = None
                if response.get("Content-Type") == "application/json" and response.body:
                    code = json.loads(response.body).get("error")
                seen.append((response.status, code, len(response.body)))
                if request is head:
                    if head.endswith(PLAIN) and head != PLAIN:  # pipelined: its second answer
                        seen.append(_next(conn))
                    conn.send(PLAIN)
        except (ConnectionClosed, OSError):
            seen.append(("closed",))
    return seen


def _next(conn: RawConnection) -> tuple[object, ...]:
    response = conn.read_response()
    return response.status, None, len(response.body)


@pytest.mark.parametrize("head", ODD, ids=[f"odd-{n}" for n in range(len(ODD))])
def test_odd_heads_get_the_same_answers(pair: tuple[Relayd, Relayd], head: bytes) -> None:
    compiled, twin = pair
    assert answers(compiled, head) == answers(twin, head)


def test_mangled_heads_get_the_same_answers(pair: tuple[Relayd, Relayd]) -> None:
    compiled, twin = pair
    differ = [(head, got, expected) for head in mangled(BASE, 1204)
              if (got := answers(compiled, head)) != (expected := answers(twin, head))]
    assert not differ, differ[:3]


# --- upstream answers -------------------------------------------------------------------------

LIGHTTPD_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: \"3880012345\"\r\n"
                   b"Last-Modified: Thu, 03 Dec 2026 10:00:00 GMT\r\nContent-Length: 11\r\n"
                   b"Accept-Ranges: bytes\r\nServer: lighttpd/1.4.69\r\n\r\nhello world")
ODD_ANSWERS = [
    LIGHTTPD_ANSWER,
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: a@b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Sendfile: /etc/passwd\r\nX-Accel-Redirect: /x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"\x00\x01 this is not HTTP \xff\r\n\r\n",
]


class CannedUpstream:
    """Answers ``GET /data/N`` with ``answers[N]``, in one write, then closes the connection
    (which also ends an answer framed by the close)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed: the module is done
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    head += piece
                target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                number = target.rsplit(b"/", 1)[-1]
                if number.isdigit() and int(number) < len(self.answers):
                    conn.sendall(self.answers[int(number)])

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def canned_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Relayd, Relayd]]:
    """A compiled relayd and its twin in front of one CannedUpstream."""
    upstream = CannedUpstream(ODD_ANSWERS + mangled(LIGHTTPD_ANSWER, 412))
    try:
        with compiled_and_twin(tmp_path_factory, upstream.url) as both:
            yield both
    finally:
        upstream.close()


#: set per answer, whoever relays it
PER_ANSWER = {"x-relay-request-id", "date"}


def relayed(relayd: Relayd, number: int) -> tuple[object, ...]:
    """What the client gets for the upstream's answer ``number``: status, headers, body."""
    with RawConnection(relayd.tcp, timeout=15) as conn:
        conn.send(b"GET /data/%d HTTP/1.1\r\nHost: relay.test\r\n\r\n" % number)
        try:
            response = conn.read_response()
        except ConnectionClosed:
            return ("closed",)
    body = response.body
    if response.get("Content-Type") == "application/json":
        body = json.loads(body).get("error", body)
    return (response.status, [(k.lower(), v) for k, v in response.headers if k.lower() not in PER_ANSWER], body)


def test_odd_and_mangled_upstream_answers_are_relayed_alike(canned_pair: tuple[Relayd, Relayd]) -> None:
    compiled, twin = canned_pair
    count = len(ODD_ANSWERS) + MANGLED
    differ = [(number, got, expected) for number in range(count)
              if (got := relayed(compiled, number)) != (expected := relayed(twin, number))]
    assert not differ, differ[:3]
