"""The redis-stream sink against a real redis-server, driven through its delivery (open,
write, finish, abort), plus the pieces every sink shares: the in-flight limit that
each sink has (taken by the exchange). Idempotency-Keys against Redis are in
test_idempotency_redis.py.

Each test uses a stream of its own, so the tests share one server. The failure tests
stop (SIGSTOP), kill and restart a server of their own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import FileSinkConfig, RedisStreamSinkConfig, SinkConfig
from relay.errors import BadGateway, BadRequest, ServiceUnavailable
from relay.sinks import build_sink
from relay.sinks.base import Receipt
from relay.sinks.redis_stream import RedisStreamSink
from relay.timers import Deadlines
from support import free_port, poll_until
from support.deliveries import deliver, run
from support.redis import REDIS_SERVER, RedisServer, server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may stop, kill and restart."""
    running = RedisServer(tmp_path)
    yield running
    running.stop()


def stream_name() -> str:
    return f"events-{uuid.uuid4().hex[:8]}"


def sink_config(url: str, stream: str, **options: Any) -> RedisStreamSinkConfig:
    return RedisStreamSinkConfig(name="events", url=url, stream=stream, **options)


def entries(server: RedisServer, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    with server.client() as client:
        return [(entry_id.decode(), fields) for entry_id, fields in client.xrange(stream)]


def datas(server: RedisServer, stream: str) -> list[bytes]:
    return [fields[b"data"] for _, fields in entries(server, stream)]


# --- what is added ----------------------------------------------------------------------

RECORDS = [b'{"id": 1, "name": "caf\xc3\xa9"}', b'  [1, 2, {"x": null}]  ', b'"just a string"']


def test_each_record_is_one_entry_byte_exact_at_every_split_point(server: RedisServer) -> None:
    body = b"\n".join(RECORDS)  # the last record has no "\n"

    async def main() -> None:
        for cut in range(len(body) + 1):
            stream = stream_name()
            sink = RedisStreamSink(sink_config(server.url, stream))
            receipt = await deliver(sink, [body[:cut], body[cut:]])
            await sink.close()
            added = entries(server, stream)
            assert [fields[b"data"] for _, fields in added] == RECORDS, cut
            assert receipt == {"stream": stream, "ids": [added[0][0], added[-1][0]], "records": 3}

    run(main)


def test_entry_fields(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> Receipt:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            await deliver(sink, [b'{"a": 1}\n'], flow="orders", key=b"k-1", subject="alice@example.test")
            return await deliver(sink, [b'{"b": 2}\n'])
        finally:
            await sink.close()

    run(main)
    ((_, fields), (_, plain)) = entries(server, stream)
    assert fields.keys() == {b"data", b"request_id", b"flow", b"subject", b"idempotency_key"}
    assert fields[b"data"] == b'{"a": 1}'
    assert fields[b"request_id"].startswith(b"req-")
    assert fields[b"flow"] == b"orders"
    assert fields[b"subject"] == b"alice@example.test"
    assert fields[b"idempotency_key"] == b"k-1"
    assert plain.keys() == {b"data", b"request_id", b"flow"}  # no caller, no key: no such fields


def test_body_mode_adds_the_whole_body_as_one_entry(server: RedisServer) -> None:
    stream = stream_name()
    body = bytes(range(256)) * 4 + b"\n\n not json \n"

    async def main() -> Receipt:
        sink = RedisStreamSink(sink_config(server.url, stream, entry="body"))
        try:
            return await deliver(sink, [body[:100], body[100:]])
        finally:
            await sink.close()

    receipt = run(main)
    ((entry_id, fields),) = entries(server, stream)
    assert fields[b"data"] == body
    assert b"idempotency_key" not in fields
    assert receipt == {"stream": stream, "ids": [entry_id, entry_id], "records": 1}


@pytest.mark.parametrize(("pieces", "detail"), [
    ([b'{"ok": 1}\n', b"{not json}\n"],
     "line 2: not valid JSON (unexpected character, expected a string key at column 2)"),
    ([b'{"ok": 1}\n\n{"ok": 3}\n'], "line 2: not valid JSON (an empty line)"),
    ([b'{"ok": 1}\n{"ok": 2}\n{"cut'], "line 3: not valid JSON (unexpected end of data at column 6)"),  # at finish
], ids=["bad-line", "empty-line", "bad-last-line"])
def test_a_bad_line_is_400_naming_it_and_nothing_is_added(server: RedisServer, pieces: list[bytes],
                                                           detail: str) -> None:
    stream = stream_name()

    async def main() -> None:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            with pytest.raises(BadRequest) as caught:
                await deliver(sink, pieces)
            assert caught.value.status == 400
            assert caught.value.detail == detail
        finally:
            await sink.close()

    run(main)
    with server.client() as client:
        assert client.exists(stream) == 0


def test_a_body_without_records_adds_nothing(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> Receipt:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            return await deliver(sink, [])
        finally:
            await sink.close()

    assert run(main) == {"stream": stream, "ids": [], "records": 0}
    with server.client() as client:
        assert client.exists(stream) == 0


def test_maxlen_trims_approximately_and_only_when_set(server: RedisServer) -> None:
    trimmed, kept = stream_name(), stream_name()
    body = b"".join(b'{"n": %d}\n' % n for n in range(1000))

    async def main() -> None:
        for stream, maxlen in ((trimmed, 10), (kept, None)):
            sink = RedisStreamSink(sink_config(server.url, stream, maxlen=maxlen))
            try:
                assert (await deliver(sink, [body]))["records"] == 1000
            finally:
                await sink.close()

    run(main)
    with server.client() as client:
        # "~" trims whole radix-tree nodes (100 entries by default): at least maxlen stay
        assert 10 <= client.xlen(trimmed) < 1000
        assert client.xlen(kept) == 1000
    assert datas(server, trimmed)[-1] == b'{"n": 999}'


def test_each_request_is_contiguous_under_concurrency(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> list[Receipt]:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            bodies = [b"".join(b'{"req": %d, "n": %d}\n' % (r, n) for n in range(200)) for r in range(20)]
            # many small writes, so the deliveries interleave while their bodies arrive
            return await asyncio.gather(*(deliver(sink, body.splitlines(keepends=True)) for body in bodies))
        finally:
            await sink.close()

    receipts = run(main)
    added = entries(server, stream)
    positions = {entry_id: i for i, (entry_id, _) in enumerate(added)}
    for r, receipt in enumerate(receipts):
        ids = receipt["ids"]
        assert isinstance(ids, list)
        first, last = positions[ids[0]], positions[ids[1]]
        assert last - first == 199
        assert [fields[b"data"] for _, fields in added[first:last + 1]] == [
            b'{"req": %d, "n": %d}' % (r, n) for n in range(200)
        ]


# --- failures -----------------------------------------------------------------------------


def test_nothing_listening_is_503_at_once() -> None:
    async def main() -> None:
        sink = RedisStreamSink(sink_config(f"redis://127.0.0.1:{free_port()}/0", stream_name(), timeout=5.0))
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as caught:
                await deliver(sink, [b"{}\n"])
            assert time.monotonic() - started < 1.0
            assert (caught.value.sink, caught.value.retry_after) == ("events", 1)
            assert sink.stats()["failures"] == 1
        finally:
            await sink.close()

    run(main)


def test_a_stopped_redis_is_503_within_the_timeout_and_adds_nothing_later(own_server: RedisServer) -> None:
    stream = stream_name()
    timeout = 0.5

    async def main() -> None:
        sink = RedisStreamSink(sink_config(own_server.url, stream, timeout=timeout))
        try:
            await deliver(sink, [b'{"before": 1}\n'])  # leaves a pooled connection the next one reuses
            own_server.pause()
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                await deliver(sink, [b'{"while stopped": 1}\n'])
            assert timeout - 0.05 < time.monotonic() - started < timeout + 0.5  # loop timers round
        finally:
            own_server.resume()
        # Redis now reads the script relay sent before giving up: it must refuse to run late
        with own_server.client() as client:
            poll_until(lambda: _script_calls(client) >= 2, 5, "the abandoned script to reach Redis")
        await deliver(sink, [b'{"after": 1}\n'])
        await sink.close()

    run(main)
    assert datas(own_server, stream) == [b'{"before": 1}', b'{"after": 1}']


def _script_calls(client: Any) -> int:
    """Scripts Redis ran to their end (a NOSCRIPT answer is a failed call, not counted)."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
               - int(stats.get(f"cmdstat_{command}", {}).get("failed_calls", 0)) for command in ("eval", "evalsha"))


def test_one_connection_whatever_the_load_while_redis_is_stopped(own_server: RedisServer) -> None:
    timeout = 1.0

    async def main() -> None:
        sink = RedisStreamSink(sink_config(own_server.url, stream_name(), timeout=timeout))
        own_server.pause()
        try:
            started = time.monotonic()
            waiting = asyncio.gather(*(deliver(sink, [b"{}\n"]) for _ in range(48)), return_exceptions=True)
            # the kernel completes connections to a stopped server: count them as they appear
            await asyncio.to_thread(poll_until, lambda: _connections_to(own_server.port) >= 1, 5,
                                    "a connection")
            results = await waiting
            assert _connections_to(own_server.port) <= 1
            assert all(isinstance(result, ServiceUnavailable) for result in results), results
            assert time.monotonic() - started < timeout + 0.5
        finally:
            own_server.resume()
            await sink.close()

    run(main)


def _connections_to(port: int) -> int:
    """Established TCP connections to ``port`` on 127.0.0.1 (only this test connects there)."""
    target = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == target and row[3] == "01")


def test_a_restarted_redis_is_used_again(own_server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> None:
        sink = RedisStreamSink(sink_config(own_server.url, stream))
        try:
            await deliver(sink, [b'{"n": 1}\n'])
            own_server.kill()
            with pytest.raises(ServiceUnavailable):
                await deliver(sink, [b'{"n": 2}\n'])
            own_server.restart()
            # the pooled connection is dead and the script cache empty: both are recovered
            await deliver(sink, [b'{"n": 3}\n'])
        finally:
            await sink.close()

    run(main)
    assert datas(own_server, stream) == [b'{"n": 3}']  # no append-only file: the first is gone


def test_an_error_redis_answers_is_502(server: RedisServer) -> None:
    stream = stream_name()
    with server.client() as client:
        client.set(stream, b"not a stream")

    async def main() -> None:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            with pytest.raises(BadGateway) as caught:
                await deliver(sink, [b"{}\n{}\n"])
            assert caught.value.sink == "events" and "WRONGTYPE" in caught.value.detail
        finally:
            await sink.close()

    run(main)
    with server.client() as client:
        assert client.get(stream) == b"not a stream"


# --- shared by every sink: the in-flight limit --------------------------------------------


@pytest.mark.parametrize("kind", ["redis-stream", "file"])
def test_every_sink_has_max_in_flight_slots(server: RedisServer, tmp_path: Path, kind: str) -> None:
    config: SinkConfig
    if kind == "file":
        config = FileSinkConfig(name="events", path=str(tmp_path / "out.ndjson"), fsync="never", max_in_flight=2)
    else:
        config = sink_config(server.url, stream_name(), max_in_flight=2)

    async def main() -> None:
        sink = build_sink(config, Deadlines(asyncio.get_running_loop()))
        try:
            sink.slots.take()
            sink.slots.take()
            with pytest.raises(ServiceUnavailable) as caught:
                sink.slots.take()
            assert (caught.value.status, caught.value.sink, caught.value.retry_after) == (503, "events", 1)
            sink.slots.give_back()
            sink.slots.take()  # a slot given back is free again
            assert sink.slots.taken == 2
        finally:
            await sink.close()

    run(main)
