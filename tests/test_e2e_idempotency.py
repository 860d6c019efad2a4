"""Idempotency-Key end to end: real relayd (direct TCP) and redis-server, file and stream sinks.

A key is the caller's own: another caller sending it is accepted as a request of its own,
and its receipt points at its own data. A retry (same caller, same key, same request)
gets the first receipt and nothing is kept again; the same key with another body or
target is 422 and nothing is kept; a request while the first with its key is in flight is
409 and nothing is kept. Whatever a 2xx acknowledged is where its receipt says.

Tokens are minted by tools/devtoken for relay's development issuer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Address, RawConnection, Relayd, Response, exchange, free_port, request_bytes
from support.procs import ROOT
from support.redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

SINKS = ("file", "stream")


def relay_config(workdir: Path, port: int, redis_url: str) -> str:
    data = workdir / "data"
    flows = "".join(f"""
[[flow]]
name = "{name}"
path = "/{name}/"
methods = ["POST"]
auth = "{auth}"
sink = "{sink}"
""" for name, auth, sink in (("file", "jwt", "keyed_file"), ("stream", "jwt", "keyed_stream"),
                             ("open-file", "none", "keyed_file"), ("open-stream", "none", "keyed_stream")))
    return f"""\
[server]
listen = ["127.0.0.1:{port}"]
shutdown_grace = "2s"

[audit]
path = "{workdir / 'audit.jsonl'}"

[[issuer]]
name = "dev"
issuer = "https://idp.example.test/"
audiences = ["relay"]
jwks_file = "{ROOT / 'conf' / 'keys' / 'dev-jwks.json'}"

[sink.keyed_file]
type = "file"
path = "{data / 'keyed.ndjson'}"
fsync = "never"

[sink.keyed_stream]
type = "redis-stream"
url = "{redis_url}"
stream = "keyed"
timeout = "2s"

[sink.journal]
type = "file"
path = "{data / 'journal.ndjson'}"
fsync = "never"

[[flow]]
name = "both"
path = "/both/"
methods = ["POST"]
sink = "journal"
tee = ["keyed_stream"]
{flows}"""


class Keyed:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.relayd = Relayd(workdir, relay_config(workdir, free_port(), self.redis.url))
        self.tokens = {who: _devtoken(who) for who in ("alice", "bob")}

    def close(self) -> None:
        self.relayd.stop()
        self.redis.stop()

    @property
    def address(self) -> Address:
        return self.relayd.tcp

    def stored(self, sink: str) -> Any:
        """What the sink holds now: the file's bytes, or the stream's datas."""
        if sink in ("file", "open-file"):
            path = self.workdir / "data" / "keyed.ndjson"
            return path.read_bytes() if path.exists() else b""
        with self.redis.client() as client:
            return [fields[b"data"] for _, fields in client.xrange("keyed")]

    def at(self, sink: str, receipt: dict[str, Any], body: bytes) -> bytes:
        """The data where ``receipt`` (a 2xx's) says the request went."""
        if sink in ("file", "open-file"):
            offset = receipt["sinks"]["keyed_file"]["offset"]
            return bytes(self.stored(sink)[offset:offset + len(body)])
        first, last = receipt["sinks"]["keyed_stream"]["ids"]
        with self.redis.client() as client:
            return b"".join(fields[b"data"] + b"\n" for _, fields in client.xrange("keyed", first, last))


def _devtoken(subject: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "devtoken"), "--sub", subject],
                          capture_output=True, check=True, timeout=30, text=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    running = Keyed(tmp_path_factory.mktemp("idempotency"))
    yield running
    running.close()


def headers(keyed: Keyed, who: str | None, key: str) -> list[tuple[str, str]]:
    sent = [("Idempotency-Key", key), ("Content-Type", "application/x-ndjson")]
    if who is not None:
        sent.append(("Authorization", f"Bearer {keyed.tokens[who]}"))
    return sent


def post(keyed: Keyed, target: str, body: bytes, who: str | None, key: str) -> Response:
    return exchange(keyed.address, request_bytes("POST", target, [*headers(keyed, who, key), ("Connection", "close")],
                                                 body))


def record(tag: str) -> bytes:
    return b'{"tag": "%s", "id": "%s"}\n' % (tag.encode(), uuid.uuid4().hex.encode())


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


@pytest.mark.parametrize("sink", SINKS)
def test_a_key_another_caller_sent_is_a_request_of_its_own(keyed: Keyed, sink: str) -> None:
    key = new_key()
    alices, bobs = record("alice"), record("bob")
    first = post(keyed, f"/{sink}/x", alices, "alice", key)
    assert first.status == 200, str(first)
    second = post(keyed, f"/{sink}/x", bobs, "bob", key)
    assert second.status == 200, str(second)
    # bob's receipt is his own: it points at bob's data, never at alice's
    assert second.json()["sinks"] != first.json()["sinks"]
    assert keyed.at(sink, second.json(), bobs) == bobs
    assert keyed.at(sink, first.json(), alices) == alices
    # and each one's retry replays its own receipt, adding nothing
    before = keyed.stored(sink)
    for who, body, answer in (("alice", alices, first), ("bob", bobs, second)):
        again = post(keyed, f"/{sink}/x", body, who, key)
        assert again.status == 200, str(again)
        assert again.json()["sinks"] == answer.json()["sinks"]
    assert keyed.stored(sink) == before


@pytest.mark.parametrize("sink", SINKS)
def test_the_same_key_for_another_request_is_422_and_nothing_is_kept(keyed: Keyed, sink: str) -> None:
    key, body = new_key(), record("first")
    first = post(keyed, f"/{sink}/x", body, "alice", key)
    assert first.status == 200, str(first)
    before = keyed.stored(sink)
    for target, other in ((f"/{sink}/x", record("second")), (f"/{sink}/elsewhere", body)):
        refused = post(keyed, target, other, "alice", key)
        assert refused.status == 422, str(refused)
        assert refused.json()["error"] == "idempotency_key_reused"
    assert keyed.stored(sink) == before
    again = post(keyed, f"/{sink}/x", body, "alice", key)
    assert (again.status, again.json()["sinks"]) == (200, first.json()["sinks"])


@pytest.mark.parametrize("sink", ("open-file", "open-stream"))
def test_on_an_anonymous_flow_the_fingerprint_alone_tells_requests_apart(keyed: Keyed, sink: str) -> None:
    key, body = new_key(), record("open")
    first = post(keyed, f"/{sink}/x", body, None, key)
    assert first.status == 200, str(first)
    before = keyed.stored(sink)
    again = post(keyed, f"/{sink}/x", body, None, key)
    assert (again.status, again.json()["sinks"]) == (200, first.json()["sinks"])
    refused = post(keyed, f"/{sink}/x", record("other"), None, key)
    assert (refused.status, refused.json()["error"]) == (422, "idempotency_key_reused")
    assert keyed.stored(sink) == before


def _barrier(keyed: Keyed) -> None:
    """Once relayd has answered this, it has begun every request whose head came before
    (its requests start in the order their heads arrive)."""
    answer = exchange(keyed.address, request_bytes("GET", "/nowhere", [("Connection", "close")]))
    assert answer.status == 404


@pytest.mark.parametrize("sink", SINKS)
def test_a_request_while_the_first_with_its_key_is_in_flight_is_409(keyed: Keyed, sink: str) -> None:
    key, body = new_key(), record("held") * 3
    with RawConnection(keyed.address) as held:
        head = request_bytes("POST", f"/{sink}/x", headers(keyed, "alice", key), body)
        held.send(head[:-len(body) // 2])  # the head and half the body: in flight
        _barrier(keyed)
        before = keyed.stored(sink)
        for other in (body, record("other")):
            busy = post(keyed, f"/{sink}/x", other, "alice", key)
            assert busy.status == 409, str(busy)
            assert busy.json()["error"] == "idempotency_key_in_flight"
        # another caller's key is another scope: not held
        bobs = post(keyed, f"/{sink}/x", record("bob"), "bob", key)
        assert bobs.status == 200, str(bobs)
        assert keyed.stored(sink) != before
        before = keyed.stored(sink)
        held.send(head[-len(body) // 2:])
        done = held.read_response()
    assert done.status == 200, str(done)
    assert keyed.at(sink, done.json(), body) == body
    assert keyed.stored(sink) != before
    # the key is settled now: the retry replays, another body is 422
    assert post(keyed, f"/{sink}/x", body, "alice", key).json()["sinks"] == done.json()["sinks"]
    assert post(keyed, f"/{sink}/x", record("late"), "alice", key).status == 422


@pytest.mark.parametrize("sink", SINKS)
def test_concurrent_requests_with_one_key_keep_the_data_once(keyed: Keyed, sink: str) -> None:
    key, body = new_key(), record("burst")
    answers: list[Response] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait(10)
        answers.append(post(keyed, f"/{sink}/x", body, "alice", key))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 8
    accepted = [answer for answer in answers if answer.status == 200]
    assert accepted and all(answer.status in (200, 409) for answer in answers), [str(a) for a in answers]
    assert all(answer.json()["sinks"] == accepted[0].json()["sinks"] for answer in accepted)
    assert keyed.at(sink, accepted[0].json(), body) == body
    assert _count(keyed.stored(sink), body) == 1


def _count(stored: Any, body: bytes) -> int:
    if isinstance(stored, bytes):
        return stored.count(body)
    return sum(1 for data in stored if data + b"\n" == body)


def test_a_tee_flow_keeps_each_callers_data_in_every_sink(keyed: Keyed) -> None:
    key = new_key()
    receipts = {}
    for who in ("alice", "bob"):
        body = record(who)
        answer = post(keyed, "/both/x", body, who, key)
        assert answer.status == 200, str(answer)
        receipts[who] = answer.json()["sinks"]
        journal = (keyed.workdir / "data" / "journal.ndjson").read_bytes()
        offset = receipts[who]["journal"]["offset"]
        assert journal[offset:offset + len(body)] == body
        assert keyed.at("stream", {"sinks": receipts[who]}, body) == body
    assert receipts["alice"] != receipts["bob"]
