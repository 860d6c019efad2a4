"""The redis-stream sink against a real redis-server, driven through its delivery (open,
write, finish, abort), plus the pieces every sink shares: the in-flight limit that
each sink has (taken by the exchange), and the in-memory idempotency index.

Each test uses a stream of its own, so the tests share one server. The failure tests
stop (SIGSTOP), kill and restart a server of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import uvloop

from relay.config import FileSinkConfig, FlowConfig, RedisStreamSinkConfig, ServerConfig, SinkConfig
from relay.errors import BadGateway, BadRequest, ServiceUnavailable
from relay.fastpath import HeaderRules, scan_headers
from relay.flowcontrol import RequestBody
from relay.identity import Identity
from relay.policy import Flow
from relay.request import Request
from relay.sinks import build_sink
from relay.sinks.base import Receipt, RecentReceipts, Sink
from relay.sinks.redis_stream import POOL_SIZE, RedisStreamSink
from relay.timers import Deadlines
from support import free_port, poll_until
from support.redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

T = TypeVar("T")
_ids = itertools.count()
NO_RULES = HeaderRules((), (), underscores=False)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a fresh uvloop loop, as relayd does."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path_factory.mktemp("redis"))
    yield running
    running.stop()


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


def request_for(sink: Sink, flow: str = "ingest", key: bytes | None = None, subject: str | None = None) -> Request:
    """A complete request of ``flow`` (whose sink is ``sink``); the test writes its body."""
    headers = [(b"host", b"relay.test"), (b"transfer-encoding", b"chunked")]
    if key is not None:
        headers.append((b"idempotency-key", key))
    auth: Literal["jwt", "none"] = "none" if subject is None else "jwt"
    flow_object = Flow(FlowConfig(name=flow, path="/ingest/", sink=sink.name, auth=auth), {sink.name: sink},
                       ServerConfig(listen=()), None)
    identity = None if subject is None else Identity(subject, "dev", (), (), {"sub": subject}, None, "k1", 1 << 40)
    loop = asyncio.get_running_loop()
    return Request(f"req-{next(_ids)}", "POST", "1.1", "/ingest/x", b"/ingest/x", scan_headers(headers, NO_RULES),
                   flow_object, "127.0.0.1", RequestBody(None, 1 << 40, complete=True), False, loop.time(), identity)


async def deliver(sink: Sink, pieces: Iterable[bytes], flow: str = "ingest", key: bytes | None = None,
                  subject: str | None = None) -> Receipt:
    """What the exchange does for a flow's sink: open, write every piece, finish (abort on failure)."""
    delivery = sink.open(request_for(sink, flow, key, subject), False, None)
    try:
        for piece in pieces:
            await delivery.write(piece)
        return await delivery.finish()
    except BaseException:
        delivery.abort()
        raise


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
    ([b'{"ok": 1}\n', b"{not json}\n"], "line 2: not valid JSON"),
    ([b'{"ok": 1}\n\n{"ok": 3}\n'], "line 2: not valid JSON"),
    ([b'{"ok": 1}\n{"ok": 2}\n{"cut'], "line 3: not valid JSON"),  # found at finish
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


# --- idempotency ------------------------------------------------------------------------


def test_a_retried_key_adds_nothing_and_gets_the_first_receipt(server: RedisServer) -> None:
    stream = stream_name()
    body = [b'{"a": 1}\n{"a": 2}\n']

    async def main() -> tuple[Receipt, Receipt, Receipt, Receipt, dict[str, int]]:
        sink = RedisStreamSink(sink_config(server.url, stream, idempotency_ttl=600.0))
        try:
            first = await deliver(sink, body, key=b"key-1")
            again = await deliver(sink, body, key=b"key-1")
            other_flow = await deliver(sink, body, flow="other", key=b"key-1")
            other_key = await deliver(sink, body, key=b"key-2")
            return first, again, other_flow, other_key, sink.stats()
        finally:
            await sink.close()

    first, again, other_flow, other_key, stats = run(main)
    assert again == first
    assert len({str(first["ids"]), str(other_flow["ids"]), str(other_key["ids"])}) == 3
    assert len(datas(server, stream)) == 6
    assert stats == {"added": 6, "replays": 1, "failures": 0}
    with server.client() as client:
        ttl = client.ttl(f"{stream}:idempotency:ingest:key-1")
        assert 590 < ttl <= 600


def test_concurrent_retries_with_one_key_add_once(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> list[Receipt]:
        sink = RedisStreamSink(sink_config(server.url, stream))
        try:
            return await asyncio.gather(*(deliver(sink, [b'{"once": true}\n'], key=b"same") for _ in range(20)))
        finally:
            await sink.close()

    receipts = run(main)
    assert all(receipt == receipts[0] for receipt in receipts)
    assert datas(server, stream) == [b'{"once": true}']


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
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


def test_the_pool_is_bounded_while_redis_is_stopped(own_server: RedisServer) -> None:
    timeout = 1.0

    async def main() -> None:
        sink = RedisStreamSink(sink_config(own_server.url, stream_name(), timeout=timeout))
        own_server.pause()
        try:
            started = time.monotonic()
            waiting = asyncio.gather(*(deliver(sink, [b"{}\n"]) for _ in range(3 * POOL_SIZE)),
                                     return_exceptions=True)
            # the kernel completes connections to a stopped server: count them as they appear
            await asyncio.to_thread(poll_until, lambda: _connections_to(own_server.port) >= POOL_SIZE, 5,
                                    "the pool to fill")
            assert _connections_to(own_server.port) == POOL_SIZE
            results = await waiting
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


# --- shared by every sink: the in-flight limit and the idempotency index ----------------


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


def test_recent_receipts_replay_wait_and_forget() -> None:
    async def main() -> None:
        recent = RecentReceipts(capacity=2, ttl=60.0)
        started, release = asyncio.Event(), asyncio.Event()

        async def slow() -> Receipt:
            started.set()
            await release.wait()
            return {"n": 1}

        async def quick(n: int) -> Receipt:
            return {"n": n}

        first = asyncio.create_task(recent.once((b"f", b"k"), slow))
        await started.wait()
        # a retry arriving while the first is being accepted waits for it, then replays it
        retry = asyncio.create_task(recent.once((b"f", b"k"), lambda: quick(2)))
        done, _ = await asyncio.wait([retry], timeout=0.1)
        assert not done, "the retry did not wait for the request holding its key"
        release.set()
        assert list(await asyncio.gather(first, retry)) == [{"n": 1}, {"n": 1}]
        assert recent.replays == 1
        # keys are per flow; past the capacity the oldest key is forgotten
        assert await recent.once((b"g", b"k"), lambda: quick(3)) == {"n": 3}
        assert await recent.once((b"f", b"k2"), lambda: quick(4)) == {"n": 4}
        assert await recent.once((b"g", b"k"), lambda: quick(0)) == {"n": 3}
        assert await recent.once((b"f", b"k"), lambda: quick(5)) == {"n": 5}

        # a failed acceptance is not remembered: the retry is accepted
        async def fail() -> Receipt:
            raise ServiceUnavailable("disk trouble")

        with pytest.raises(ServiceUnavailable):
            await recent.once((b"f", b"bad"), fail)
        assert await recent.once((b"f", b"bad"), lambda: quick(6)) == {"n": 6}

    run(main)


def test_recent_receipts_expire_after_ttl() -> None:
    async def main() -> None:
        recent = RecentReceipts(capacity=100, ttl=0.05)

        async def accept() -> Receipt:
            return {"at": time.monotonic()}

        first = await recent.once((b"f", b"k"), accept)
        assert await recent.once((b"f", b"k"), accept) == first
        stored_at = first["at"]
        assert isinstance(stored_at, float)
        await asyncio.to_thread(poll_until, lambda: time.monotonic() - stored_at > 0.05, 5, "the ttl")
        assert await recent.once((b"f", b"k"), accept) != first

    run(main)
