"""Small bodies read whole before their exchange starts, taken by the sink from callbacks.

A body that arrives with its head (up to 64 KiB) is appended to a file sink, or added to
a redis-stream sink, without a task (``Sink.relay_now``). These tests hold that lane to
the general one's answers: each body is sent both ways, whole with its head and held back
behind ``Expect: 100-continue`` (so it arrives in a later read and takes the general
path), and both must store the same bytes and answer the same receipt; bad records, a
dead Redis and pipelined requests get what they get the general way.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import RawConnection, Relayd, Response, Upstream, exchange, free_port, poll_until, request_bytes
from support.redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def relay_config(workdir: Path, port: int, redis_url: str, dead_url: str, upstream_url: str) -> str:
    data = workdir / "data"
    sinks = {
        "up": f'type = "http"\nurl = "{upstream_url}"',
        "records": f'type = "file"\npath = "{data / "records.ndjson"}"\nfsync = "never"',
        "raw": f'type = "file"\npath = "{data / "blobs.raw"}"\nformat = "raw"\nfsync = "never"',
        "stream": f'type = "redis-stream"\nurl = "{redis_url}"\nstream = "events"',
        "bodies": f'type = "redis-stream"\nurl = "{redis_url}"\nstream = "bodies"\nentry = "body"',
        "dead": f'type = "redis-stream"\nurl = "{dead_url}"\nstream = "lost"\ntimeout = "1s"',
    }
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\n\n[audit]\npath = "{workdir / "audit.jsonl"}"\n'
    for name, body in sinks.items():
        text += f"\n[sink.{name}]\n{body}\n"
    for name in sinks:
        text += f'\n[[flow]]\nname = "{name}"\npath = "/{name}/"\nmethods = ["POST"]\nauth = "none"\nsink = "{name}"\n'
    return text


class Whole:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.upstream = Upstream(workdir)
        self.relayd = Relayd(workdir, relay_config(workdir, free_port(), self.redis.url,
                                                   f"redis://127.0.0.1:{free_port()}/0", self.upstream.url))

    def stored(self, flow: str, receipt: dict[str, Any], size: int) -> list[bytes]:
        """What the flow's sink holds for ``receipt``: the file's bytes, or the stream's entries."""
        sink = receipt["sinks"][flow]
        if "file" in sink:
            data = (self.workdir / "data" / sink["file"]).read_bytes()
            return [data[sink["offset"]:sink["offset"] + size]]
        with self.redis.client() as client:
            if not sink["ids"]:
                return []
            return [fields[b"data"] for _, fields in client.xrange(sink["stream"], *sink["ids"])]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.workdir / "audit.jsonl").read_text().splitlines()]

    def close(self) -> None:
        self.relayd.stop()
        self.redis.stop()
        self.upstream.service.stop()


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Whole]:
    running = Whole(tmp_path_factory.mktemp("whole"))
    yield running
    running.close()


def post_whole(whole: Whole, flow: str, body: bytes) -> Response:
    return exchange(whole.relayd.tcp, request_bytes("POST", f"/{flow}/x", [("Connection", "close")], body))


def post_held_back(whole: Whole, flow: str, body: bytes) -> Response:
    """The body sent only after relayd asked for it: it arrives in a read of its own."""
    head = request_bytes("POST", f"/{flow}/x", [("Connection", "close"), ("Expect", "100-continue"),
                                                ("Content-Length", str(len(body)))])
    with RawConnection(whole.relayd.tcp) as conn:
        conn.send(head)
        assert conn.read_interim() == 100
        conn.send(body)
        return conn.read_response()


def records(tag: str, count: int) -> list[bytes]:
    return [json.dumps({"id": f"{tag}-{n}", "text": "grüße ☃ " * n}, ensure_ascii=False).encode()
            for n in range(count)]


# (flow, what a body of these lines stores: file bytes or stream entries)
FLOWS = [
    ("records", lambda body, lines: [body if body.endswith(b"\n") else body + b"\n"]),
    ("raw", lambda body, lines: [body]),
    ("stream", lambda body, lines: lines),
    ("bodies", lambda body, lines: [body]),
]


@pytest.mark.parametrize("flow,expected", FLOWS, ids=[flow for flow, _ in FLOWS])
@pytest.mark.parametrize("final_newline", [True, False], ids=["newline", "no-final-newline"])
def test_both_ways_store_the_same_bytes_and_answer_the_same_receipt(
        whole: Whole, flow: str, expected: Any, final_newline: bool) -> None:
    answers = []
    for send in (post_whole, post_held_back):
        lines = records(uuid.uuid4().hex[:8], 20)
        body = b"\n".join(lines) + (b"\n" if final_newline else b"")
        response = send(whole, flow, body)
        assert response.status == 200, str(response)
        receipt = response.json()
        size = len(body) + (flow == "records" and not final_newline)
        assert whole.stored(flow, receipt, size) == expected(body, lines)
        assert receipt["bytes"] == len(body)
        answers.append(receipt)
    quick, general = answers
    assert quick.keys() == general.keys() and quick["sinks"][flow].keys() == general["sinks"][flow].keys()
    assert quick.get("records") == general.get("records")


@pytest.mark.parametrize("flow", ["records", "stream"])
def test_a_bad_line_is_400_naming_it_both_ways_and_nothing_is_stored(whole: Whole, flow: str) -> None:
    body = b'{"ok": 1}\n{"ok": 2}\nnot json\n{"ok": 4}\n'
    before = (whole.workdir / "data" / "records.ndjson").stat().st_size if flow == "records" else None
    with whole.redis.client() as client:
        length = client.xlen("events")
    for send in (post_whole, post_held_back):
        response = send(whole, flow, body)
        assert response.status == 400, str(response)
        assert "line 3" in response.body.decode()
    if before is not None:
        assert (whole.workdir / "data" / "records.ndjson").stat().st_size == before
    with whole.redis.client() as client:
        assert client.xlen("events") == length


def test_a_dead_redis_is_503_and_its_one_audit_record_says_so(whole: Whole) -> None:
    response = post_whole(whole, "dead", b'{"lost": true}\n')
    assert response.status == 503, str(response)
    request_id = response.get("X-Relay-Request-Id")
    assert request_id
    records_of_it = [r for r in whole.audit() if r.get("request_id") == request_id]
    assert len(records_of_it) == 1 and records_of_it[0]["status"] == 503
    assert records_of_it[0]["failed_sink"] == "dead"


@pytest.mark.parametrize("flow", ["records", "stream"])
def test_pipelined_small_bodies_are_answered_in_order_and_stored_in_order(whole: Whole, flow: str) -> None:
    tag = uuid.uuid4().hex[:8]
    bodies = [json.dumps({"id": f"{tag}-{n}"}).encode() + b"\n" for n in range(30)]
    with RawConnection(whole.relayd.tcp) as conn:
        conn.send(b"".join(request_bytes("POST", f"/{flow}/x", [], body) for body in bodies))
        answers = [conn.read_response() for _ in bodies]
    assert [a.status for a in answers] == [200] * len(bodies)
    stored = [whole.stored(flow, a.json(), len(body)) for a, body in zip(answers, bodies)]
    assert stored == [[body if flow == "records" else body.rstrip(b"\n")] for body in bodies]
    if flow == "records":
        offsets = [a.json()["sinks"][flow]["offset"] for a in answers]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    ids = [str(a.get("X-Relay-Request-Id")) for a in answers]
    audited = [r["request_id"] for r in whole.audit() if r.get("request_id") in ids]
    assert sorted(audited) == sorted(ids)  # one record each


def test_a_small_body_to_an_http_upstream_goes_in_one_write_and_a_stale_connection_sends_it_again(
        whole: Whole) -> None:
    body = b"\n".join(records(uuid.uuid4().hex[:8], 30)) + b"\n"
    response = post_whole(whole, "up", body)  # leaves a pooled connection
    assert response.status == 200, str(response)
    mark = len(whole.upstream.records())
    # the upstream closes that connection without answering: a stale pooled connection as
    # far as relay can tell, so the request goes again on a fresh one, its body whole
    response = exchange(whole.relayd.tcp, request_bytes("POST", "/up/x?fail=close", [("Connection", "close")], body))
    assert response.status == 502, str(response)

    def attempts() -> list[dict[str, Any]] | None:
        done = [r for r in whole.upstream.records()[mark:] if r["phase"] == "done"]
        return done if len(done) == 2 else None

    for attempt in poll_until(attempts, 5, "both attempts at the upstream"):
        assert attempt["complete"] and attempt["body_len"] == len(body)
        assert attempt["sha256"] == hashlib.sha256(body).hexdigest()
