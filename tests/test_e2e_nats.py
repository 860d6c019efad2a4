"""The nats-jetstream sink end to end: client → lighttpd → relayd → nats-server (JetStream,
file storage), read back with nats-py. A 2xx names the stream sequence that holds the
body; a tee to a file as well answers 2xx only when both have it; a retry with the same
Idempotency-Key is stored once, across a relayd restart too; a dead server is 503 quickly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from nats.js.api import StorageType

from support import Relayd, exchange, free_port, request_bytes
from support.nats import NATS_SERVER, NatsServer
from support.stack import Stack

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed")


def flows(nats_url: str, workdir: Path) -> str:
    return f"""
[sink.bus]
type = "nats-jetstream"
url = ["{nats_url}"]
stream = "INGEST"
subject = "ingest.events"
timeout = "2s"
connect_timeout = "500ms"

[sink.dead_bus]
type = "nats-jetstream"
url = "nats://127.0.0.1:{free_port()}"
stream = "INGEST"
subject = "ingest.events"
connect_timeout = "300ms"

[sink.copy]
type = "file"
path = "{workdir / 'copy.ndjson'}"
fsync = "never"

[[flow]]
name = "bus"
path = "/bus/"
methods = ["POST"]
auth = "none"
sink = "bus"

[[flow]]
name = "both"
path = "/both/"
methods = ["POST"]
auth = "none"
sink = "bus"
tee = ["copy"]

[[flow]]
name = "dead"
path = "/dead/"
methods = ["POST"]
auth = "none"
sink = "dead_bus"
"""


class NatsStack:
    def __init__(self, workdir: Path) -> None:
        self.nats = NatsServer(workdir)
        try:
            self.stack = Stack(workdir, extra=flows(self.nats.url, workdir))
        except BaseException:
            self.nats.stop()
            raise

    def close(self) -> None:
        self.stack.close()
        self.nats.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsStack]:
    stack = NatsStack(tmp_path_factory.mktemp("nats"))
    yield stack
    stack.close()


def post(running: NatsStack, target: str, body: bytes, key: str | None = None) -> tuple[int, dict[str, object]]:
    headers = [("Connection", "close"), ("Content-Type", "application/x-ndjson")]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    answer = exchange(running.stack.via_lighttpd, request_bytes("POST", target, headers, body))
    return answer.status, orjson.loads(answer.body)


def stored(running: NatsStack) -> dict[int, bytes]:
    return {message.seq: message.data for message in running.nats.messages("INGEST")}


def test_a_body_is_in_the_stream_at_the_sequence_its_receipt_names(running: NatsStack) -> None:
    body = b'{"order": 1}\n{"order": 2}\n'
    status, answer = post(running, "/bus/a", body)
    assert status == 200, answer
    receipt = answer["sinks"]["bus"]  # type: ignore[index]
    assert receipt["stream"] == "INGEST" and receipt["duplicate"] is False
    assert stored(running)[receipt["seq"]] == body
    assert running.nats.stream_info("INGEST").config.storage == StorageType.FILE


def test_a_tee_answers_only_when_the_stream_and_the_file_have_it(running: NatsStack) -> None:
    body = b'{"tee": true}\n'
    status, answer = post(running, "/both/x", body)
    assert status == 200, answer
    sinks = answer["sinks"]
    assert stored(running)[sinks["bus"]["seq"]] == body  # type: ignore[index]
    assert body in (running.stack.workdir / "copy.ndjson").read_bytes()


def test_a_retry_is_stored_once_across_a_relayd_restart(running: NatsStack) -> None:
    body = b'{"pay": 10}\n'
    status, first = post(running, "/bus/pay", body, key="pay-1")
    assert status == 200, first
    status, again = post(running, "/bus/pay", body, key="pay-1")
    assert (status, again["sinks"]) == (200, first["sinks"])
    relayd = running.stack.relayd
    relayd.stop()
    running.stack.relayd = Relayd(running.stack.workdir, relayd.config_path.read_text(encoding="utf-8"))
    status, after = post(running, "/bus/pay", body, key="pay-1")
    assert status == 200, after
    assert after["sinks"]["bus"]["seq"] == first["sinks"]["bus"]["seq"]  # type: ignore[index]
    status, other = post(running, "/bus/pay", b'{"pay": 99}\n', key="pay-1")
    assert status == 422, other
    assert list(stored(running).values()).count(body) == 1


def test_a_dead_server_is_503_quickly(running: NatsStack) -> None:
    started = time.monotonic()
    status, answer = post(running, "/dead/x", b"{}\n")
    assert status == 503, answer
    assert time.monotonic() - started < 3.0
