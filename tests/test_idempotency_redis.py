"""The redis-stream sink held to Idempotency-Keys, against a real redis-server, through its
delivery: scopes live in Redis (two sinks on one stream are two workers), a request holds
its scope from its start (409) until it settles or fails, and batches of concurrent
requests fail or succeed exactly as a whole."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from relay.config import RedisStreamSinkConfig
from relay.errors import BadRequest, IdempotencyKeyInFlight, IdempotencyKeyReused, ServiceUnavailable
from relay.sinks.base import Receipt
from relay.sinks.redis_stream import KEY_LEASE, RedisStreamSink
from support.deliveries import deliver, request_for, run
from support.redis import REDIS_SERVER, RedisServer, server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def new_sink(server: RedisServer, stream: str, **options: Any) -> RedisStreamSink:
    return RedisStreamSink(RedisStreamSinkConfig(name="events", url=server.url, stream=stream, **options))


def stream_name() -> str:
    return f"keyed-{uuid.uuid4().hex[:8]}"


def datas(server: RedisServer, stream: str, first: str = "-", last: str = "+") -> list[bytes]:
    with server.client() as client:
        return [fields[b"data"] for _, fields in client.xrange(stream, first, last)]


def scope_keys(server: RedisServer, stream: str) -> dict[bytes, tuple[bytes, int]]:
    """Every scope key of ``stream``: its value and its time to live (ms)."""
    with server.client() as client:
        return {key: (client.get(key), client.pttl(key)) for key in client.scan_iter(f"{stream}:idempotency:*")}


async def reserved(server: RedisServer, stream: str) -> dict[bytes, tuple[bytes, int]]:
    """The scope keys of ``stream``, once there is one (a reservation reached Redis)."""
    for _ in range(1000):
        if scopes := await asyncio.to_thread(scope_keys, server, stream):
            return scopes
        await asyncio.sleep(0.005)
    raise AssertionError("no reservation reached Redis within 5s")


def test_a_retry_replays_another_caller_is_its_own_another_body_is_422(server: RedisServer) -> None:
    stream = stream_name()
    alices, bobs = [b'{"who": "alice"}\n{"n": 2}\n'], [b'{"who": "bob"}\n']

    async def main() -> tuple[Receipt, Receipt, dict[str, int]]:
        sink = new_sink(server, stream, idempotency_ttl=600.0)
        try:
            first = await deliver(sink, alices, key=b"k", subject="alice")
            assert await deliver(sink, alices, key=b"k", subject="alice") == first
            bob = await deliver(sink, bobs, key=b"k", subject="bob")
            with pytest.raises(IdempotencyKeyReused):
                await deliver(sink, bobs, key=b"k", subject="alice")
            with pytest.raises(IdempotencyKeyReused):
                await deliver(sink, alices, key=b"k", subject="alice", target=b"/ingest/y")
            return first, bob, sink.stats()
        finally:
            await sink.close()

    first, bob, stats = run(main)
    assert datas(server, stream, *first["ids"]) == [b'{"who": "alice"}', b'{"n": 2}']  # type: ignore[misc]
    assert datas(server, stream, *bob["ids"]) == [b'{"who": "bob"}']  # type: ignore[misc]
    assert len(datas(server, stream)) == 3
    assert (stats["added"], stats["replays"], stats["failures"]) == (3, 1, 0)
    scopes = scope_keys(server, stream)
    assert len(scopes) == 2  # alice's and bob's
    for value, ttl in scopes.values():
        assert value.startswith(b"d") and 590_000 < ttl <= 600_000


def test_two_workers_share_the_scopes(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> None:
        one, two = new_sink(server, stream), new_sink(server, stream)
        try:
            held = request_for(one, key=b"k", subject="alice")
            delivery = one.open(held, False, None)
            await reserved(server, stream)
            with pytest.raises(IdempotencyKeyInFlight):
                await deliver(two, [b"{}\n"], key=b"k", subject="alice")
            held.claim.feed(b'{"first": 1}\n')  # type: ignore[union-attr]
            await delivery.write(b'{"first": 1}\n')
            first = await delivery.finish()
            assert await deliver(two, [b'{"first": 1}\n'], key=b"k", subject="alice") == first
            with pytest.raises(IdempotencyKeyReused):
                await deliver(two, [b"{}\n"], key=b"k", subject="alice")
        finally:
            await one.close()
            await two.close()

    run(main)
    assert datas(server, stream) == [b'{"first": 1}']


def test_a_failed_request_frees_its_scope(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> None:
        sink = new_sink(server, stream)
        try:
            with pytest.raises(BadRequest):
                await deliver(sink, [b"not json\n"], key=b"k", subject="alice")
            # held from the start, freed by the abort: the retry is accepted
            assert (await deliver(sink, [b'{"ok": 1}\n'], key=b"k", subject="alice"))["records"] == 1
        finally:
            await sink.close()

    run(main)
    assert datas(server, stream) == [b'{"ok": 1}']


def test_a_reservation_is_a_lease(server: RedisServer) -> None:
    """A relayd that died mid-request holds the scope no longer than KEY_LEASE; the step
    that adds decides alone, so a request whose lease lapsed still adds at most once."""
    stream = stream_name()

    async def main() -> None:
        sink = new_sink(server, stream)
        try:
            held = request_for(sink, key=b"k", subject="alice")
            delivery = sink.open(held, False, None)
            ((key, (value, ttl)),) = (await reserved(server, stream)).items()
            assert value == b"p" + held.request_id.encode() and 0 < ttl <= KEY_LEASE * 1000
            with server.client() as client:
                client.delete(key)  # the lease lapsed
            held.claim.feed(b'{"late": 1}\n')  # type: ignore[union-attr]
            await delivery.write(b'{"late": 1}\n')
            receipt = await delivery.finish()
            assert await deliver(sink, [b'{"late": 1}\n'], key=b"k", subject="alice") == receipt
        finally:
            await sink.close()

    run(main)
    assert datas(server, stream) == [b'{"late": 1}']


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> tuple[list[Any], dict[str, int]]:
        sink = new_sink(server, stream)
        try:
            bodies = [[b'{"n": %d}\n' % n] for n in range(40)]
            jobs = [deliver(sink, body, key=b"k%d" % (n % 20), subject="alice") for n, body in enumerate(bodies)]
            jobs += [deliver(sink, [b"{}\n"], key=b"same", subject="alice") for _ in range(5)]
            jobs.append(deliver(sink, [b'{"plain": 1}\n']))
            return await asyncio.gather(*jobs, return_exceptions=True), sink.stats()
        finally:
            await sink.close()

    results, stats = run(main)
    # k0..k19 each: the first request adds, the second (another body) is 409 while the
    # first is in flight, or 422 once it settled
    for n in range(20):
        assert isinstance(results[n], dict), results[n]
        assert isinstance(results[n + 20], (IdempotencyKeyInFlight, IdempotencyKeyReused)), results[n + 20]
        assert datas(server, stream, *results[n]["ids"]) == [b'{"n": %d}' % n]
    same = results[40:45]
    assert sum(isinstance(result, dict) for result in same) == 1
    assert all(isinstance(result, (dict, IdempotencyKeyInFlight)) for result in same)
    assert isinstance(results[45], dict)
    assert sorted(datas(server, stream)) == sorted([b'{"n": %d}' % n for n in range(20)] + [b"{}", b'{"plain": 1}'])
    assert stats["batches"] < 20  # the requests went together, not one by one


def test_a_failed_batch_fails_exactly_its_requests(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)
    stream = stream_name()

    async def main() -> None:
        sink = new_sink(own, stream, timeout=0.5)
        try:
            assert (await deliver(sink, [b'{"before": 1}\n']))["records"] == 1
            own.pause()
            try:
                failed = await asyncio.gather(*(deliver(sink, [b'{"stopped": %d}\n' % n], key=b"k%d" % n,
                                                        subject="alice") for n in range(10)),
                                              return_exceptions=True)
            finally:
                own.resume()
            assert all(isinstance(result, ServiceUnavailable) for result in failed), failed
            # the keys were never settled: each retry is accepted (once), and nothing late was added
            again = await asyncio.gather(*(deliver(sink, [b'{"stopped": %d}\n' % n], key=b"k%d" % n,
                                                   subject="alice") for n in range(10)))
            assert all(receipt["records"] == 1 for receipt in again)
        finally:
            await sink.close()

    try:
        run(main)
        assert sorted(datas(own, stream)) == sorted([b'{"before": 1}'] + [b'{"stopped": %d}' % n for n in range(10)])
    finally:
        own.stop()


def test_a_key_with_an_empty_body_is_settled_too(server: RedisServer) -> None:
    stream = stream_name()

    async def main() -> None:
        sink = new_sink(server, stream)
        try:
            first = await deliver(sink, [], key=b"k", subject="alice")
            assert first == {"stream": stream, "ids": [], "records": 0}
            assert await deliver(sink, [], key=b"k", subject="alice") == first
            with pytest.raises(IdempotencyKeyReused):
                await deliver(sink, [b"{}\n"], key=b"k", subject="alice")
        finally:
            await sink.close()

    run(main)
    assert datas(server, stream) == []


def test_every_request_is_answered_as_batches_come_and_go(server: RedisServer) -> None:
    """Sixteen clients, each sending as soon as its last request was answered: batches
    start and end all the time, and no request is left waiting for one."""
    stream = stream_name()

    async def main() -> None:
        sink = new_sink(server, stream)

        async def client(n: int) -> None:
            for i in range(60):
                await deliver(sink, [b'{"c": %d, "i": %d}\n' % (n, i)])

        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(client(n) for n in range(16)))
            assert sink.stats()["batches"] < 16 * 60
        finally:
            await sink.close()

    run(main)
    assert len(datas(server, stream)) == 16 * 60
