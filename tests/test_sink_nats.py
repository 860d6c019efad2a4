"""The nats-jetstream sink against a real nats-server (JetStream, file storage), driven
through its delivery as the exchange drives it; read back with nats-py. The failure tests
kill (SIGKILL) and restart their server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StorageType

from relay.config import NatsJetStreamSinkConfig
from relay.errors import BadGateway, GatewayTimeout, IdempotencyKeyReused, PayloadTooLarge, RelayError, ServiceUnavailable
from relay.sinks import build_sink
from relay.sinks.nats_jetstream import NatsJetStreamSink
from relay.timers import Deadlines
from support import free_port
from support.deliveries import deliver, run
from support.nats import NATS_SERVER, NatsServer

pytestmark = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    running = NatsServer(tmp_path)
    yield running
    running.stop()


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"EVENTS-{tag}", f"events.{tag}"


def make_sink(urls: tuple[str, ...], stream: str, subject: str, **options: Any) -> NatsJetStreamSink:
    return NatsJetStreamSink(NatsJetStreamSinkConfig(name="bus", urls=urls, stream=stream, subject=subject,
                                                     **options))


def test_each_body_is_one_message_acknowledged_with_its_sequence(server: NatsServer) -> None:
    stream, subject = names()
    bodies = [b'{"n": 1}\n', b"\x00\xffraw bytes", b'{"n": 3}\n{"n": 4}\n']

    async def main() -> list[Any]:
        sink = build_sink(NatsJetStreamSinkConfig(name="bus", urls=(server.url,), stream=stream, subject=subject),
                          Deadlines(asyncio.get_running_loop()))
        try:
            receipts = [await deliver(sink, [body[:3], body[3:]], flow="orders", subject="alice@example.test")
                        for body in bodies]
            return receipts
        finally:
            await sink.close()

    receipts = run(main)
    assert receipts == [{"stream": stream, "seq": n, "duplicate": False} for n in (1, 2, 3)]
    stored = server.messages(stream)
    assert [m.data for m in stored] == bodies
    assert stored[0].headers["Relay-Flow"] == "orders"
    assert stored[0].headers["Relay-Subject"] == "alice@example.test"
    assert stored[0].headers["Relay-Request-Id"].startswith("req-")


def test_a_missing_stream_is_created_with_file_storage_and_the_duplicate_window(server: NatsServer) -> None:
    stream, subject = names()

    async def main() -> None:
        sink = make_sink((server.url,), stream, subject, duplicate_window=3600.0, max_msgs=100)
        try:
            await deliver(sink, [b"x"])
        finally:
            await sink.close()

    run(main)
    config = server.stream_info(stream).config
    assert config.storage == StorageType.FILE
    assert config.subjects == [subject]
    assert (config.duplicate_window, config.max_msgs) == (3600.0, 100)


def test_a_stream_without_the_subject_is_502_naming_both(server: NatsServer) -> None:
    stream, subject = names()
    server.add_stream(name=stream, subjects=["other.*"])

    async def main() -> None:
        sink = make_sink((server.url,), stream, subject)
        try:
            with pytest.raises(BadGateway) as caught:
                await deliver(sink, [b"x"])
            assert f"does not take subject {subject}" in caught.value.detail and "other.*" in caught.value.detail
        finally:
            await sink.close()

    run(main)
    assert server.messages(stream) == []


def test_a_retry_is_stored_once_even_by_a_new_relay_and_another_body_is_422(server: NatsServer) -> None:
    stream, subject = names()

    async def main() -> None:
        first = make_sink((server.url,), stream, subject)
        try:
            receipt = await deliver(first, [b"order 1"], key=b"k-1", subject="alice")
            assert await deliver(first, [b"order 1"], key=b"k-1", subject="alice") == receipt  # from memory
        finally:
            await first.close()
        restarted = make_sink((server.url,), stream, subject)  # forgets everything but the broker
        try:
            again = await deliver(restarted, [b"order 1"], key=b"k-1", subject="alice")
            assert (again["seq"], again["duplicate"]) == (receipt["seq"], True)
            with pytest.raises(IdempotencyKeyReused):
                await deliver(restarted, [b"order 2"], key=b"k-1", subject="alice")
            other = await deliver(restarted, [b"order 1"], key=b"k-1", subject="bob")  # another caller's scope
            assert other["seq"] == receipt["seq"] + 1
        finally:
            await restarted.close()

    run(main)
    assert [m.data for m in server.messages(stream)] == [b"order 1", b"order 1"]


def test_a_full_stream_is_503_and_nothing_unacknowledged_is_stored(server: NatsServer) -> None:
    stream, subject = names()

    async def main() -> int:
        sink = make_sink((server.url,), stream, subject, max_msgs=5)
        acknowledged = 0
        try:
            for n in range(8):
                try:
                    await deliver(sink, [b"%d" % n])
                    acknowledged += 1
                except ServiceUnavailable as refused:
                    assert "maximum messages" in refused.detail
            return acknowledged
        finally:
            await sink.close()

    assert run(main) == 5
    assert [m.data for m in server.messages(stream)] == [b"0", b"1", b"2", b"3", b"4"]


def test_a_body_over_the_servers_max_payload_is_413(tmp_path: Path) -> None:
    small = NatsServer(tmp_path, max_payload=65536)
    stream, subject = names()

    async def main() -> None:
        sink = make_sink((small.url,), stream, subject)
        try:
            await deliver(sink, [b"a" * 60000])
            with pytest.raises(PayloadTooLarge):
                await deliver(sink, [b"a" * 60000, b"b" * 6000])
        finally:
            await sink.close()

    try:
        run(main)
        assert [len(m.data) for m in small.messages(stream)] == [60000]
    finally:
        small.stop()


def test_nothing_listening_is_503_quickly() -> None:
    async def main() -> None:
        sink = make_sink((f"nats://127.0.0.1:{free_port()}",), "S", "s", connect_timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                await deliver(sink, [b"x"])
            assert time.monotonic() - started < 2.0
            assert sink.stats()["state"] == "disconnected"
        finally:
            await sink.close()

    run(main)


def test_every_acknowledged_body_survives_a_kill_and_restart_under_load(server: NatsServer) -> None:
    stream, subject = names()
    acknowledged: list[bytes] = []
    failed: list[type[RelayError]] = []

    async def publisher(sink: NatsJetStreamSink, lane: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set() and n < 400:
            body = b"lane %d body %d" % (lane, n)
            n += 1
            try:
                await deliver(sink, [body], key=body)
                acknowledged.append(body)
            except RelayError as err:
                failed.append(type(err))
                await asyncio.sleep(0.01)  # pacing a retry loop, not synchronisation

    async def main() -> None:
        sink = make_sink((server.url,), stream, subject, timeout=1.0, connect_timeout=0.3)
        stop = asyncio.Event()
        lanes = [asyncio.create_task(publisher(sink, lane, stop)) for lane in range(4)]
        try:
            await _until(lambda: len(acknowledged) >= 50)
            await asyncio.to_thread(server.kill)
            await _until(lambda: len(failed) >= 1)
            await asyncio.to_thread(server.restart)
            count = len(acknowledged)
            await _until(lambda: len(acknowledged) >= count + 50)
            assert sink.stats()["state"] == "connected"
        finally:
            stop.set()
            await asyncio.gather(*lanes)
            await sink.close()

    run(main)
    stored = [m.data for m in server.messages(stream)]
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))  # a retried key was never stored twice
    assert failed and set(failed) <= {ServiceUnavailable, GatewayTimeout}  # nothing else while it is down


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
