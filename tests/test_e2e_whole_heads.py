"""relayd with its compiled fast path answers every head as its twin does.

Compiled, relayd takes a bodiless head that came whole in the plainest form in one call
(relay.fastpath.whole_request) and an upstream's plain whole answer likewise; its twin
reads every message with httptools. Two relayds on one policy and one upstream, one of
each, get the same bytes: odd, hostile and mangled heads, each on a connection of its
own followed by a plain GET on the same connection. Both must give the same status and
error code to the head, and the same answer to the GET after it (or both close).
"""

from __future__ import annotations

import json
import random
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


def mangled(seed: int) -> list[bytes]:
    """BASE with one to three of MANGLERS put in or in place of bytes before its last CRLF
    CRLF (a head left unended would only wait for header_timeout)."""
    rng = random.Random(seed)
    heads = []
    for _ in range(MANGLED):
        head = bytearray(BASE[:-4])
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(head))
            piece = rng.choice(MANGLERS)
            head[at:at + rng.randint(0, 1)] = piece
        heads.append(bytes(head) + b"\r\n\r\n")
    return heads


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[tuple[Relayd, Relayd]]:
    """A compiled relayd and its twin, one policy, one upstream."""
    both = []
    for name, forced in (("compiled", ""), ("twin", "1")):
        workdir: Path = tmp_path_factory.mktemp(name)
        both.append(Relayd(workdir, relay_config(workdir, upstream.url), extra_env={"RELAY_NO_EXTENSIONS": forced}))
    yield both[0], both[1]
    for running in both:
        running.stop()


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
    differ = [(head, got, expected) for head in mangled(1204)
              if (got := answers(compiled, head)) != (expected := answers(twin, head))]
    assert not differ, differ[:3]
