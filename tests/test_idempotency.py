"""Idempotency-Key scopes and fingerprints (relay.idempotency), the in-memory store, and
the file sink held to them, driven through its delivery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from relay.config import FileSinkConfig
from relay.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from relay.idempotency import Claim, RecentReceipts
from relay.sinks.base import Receipt
from relay.sinks.file import FileSink
from relay.timers import Deadlines
from support import poll_until
from support.deliveries import deliver, request_for, run

BODY = b'{"a": 1}\n{"b": 2}\n'


def claim(sink: FileSink, key: bytes = b"k", subject: str | None = "alice", issuer: str = "dev",
          flow: str = "ingest", target: bytes = b"/ingest/x", body: bytes = BODY, cut: int = 0) -> Claim:
    """A claim for a request, its body fed in two pieces split at ``cut``."""
    request = request_for(sink, flow, key, subject, issuer=issuer, target=target)
    assert request.claim is not None
    request.claim.feed(body[:cut])
    request.claim.feed(body[cut:])
    return request.claim


def file_sink(path: Path) -> FileSink:
    return FileSink(FileSinkConfig(name="archive", path=str(path), fsync="never"),
                    Deadlines(asyncio.get_running_loop()))


def test_the_scope_is_flow_caller_and_key(tmp_path: Path) -> None:
    async def main() -> None:
        sink = file_sink(tmp_path / "out.ndjson")
        base = claim(sink).scope
        assert claim(sink, body=b"other").scope == base  # the body is not in the scope
        assert claim(sink, target=b"/ingest/y").scope == base
        others = [claim(sink, key=b"k2"), claim(sink, subject="bob"), claim(sink, issuer="corp"),
                  claim(sink, flow="orders"), claim(sink, subject=None)]
        assert len({base, *(other.scope for other in others)}) == 6
        # no concatenation of the parts makes two scopes equal
        assert claim(sink, subject="a", key=b"bc").scope != claim(sink, subject="ab", key=b"c").scope
        await sink.close()

    run(main)


def test_the_fingerprint_is_method_target_and_body_however_split(tmp_path: Path) -> None:
    async def main() -> None:
        sink = file_sink(tmp_path / "out.ndjson")
        prints = {claim(sink, cut=cut).fingerprint for cut in range(len(BODY) + 1)}
        assert len(prints) == 1
        (base,) = prints
        assert claim(sink, subject="bob").fingerprint == base  # the caller is in the scope instead
        assert claim(sink, body=BODY + b"\n").fingerprint != base
        assert claim(sink, target=b"/ingest/x?v=2").fingerprint != base
        request = request_for(sink, key=b"k")
        request.method = "PUT"
        put = Claim(request, b"k")
        put.feed(BODY)
        assert put.fingerprint != base
        await sink.close()

    run(main)


def test_replay_gives_the_receipt_only_to_the_same_request(tmp_path: Path) -> None:
    async def main() -> None:
        sink = file_sink(tmp_path / "out.ndjson")
        first = claim(sink)
        receipt: Receipt = {"file": "out.ndjson", "offset": 7}
        assert claim(sink).replay(first.fingerprint, receipt) is receipt
        with pytest.raises(IdempotencyKeyReused) as caught:
            claim(sink, body=b"{}\n").replay(first.fingerprint, receipt)
        assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused")
        await sink.close()

    run(main)


def test_recent_receipts_hold_settle_release_and_forget(tmp_path: Path) -> None:
    async def main() -> None:
        sink = file_sink(tmp_path / "out.ndjson")
        recent = RecentReceipts(capacity=2, ttl=60.0)
        first = recent.reserve(claim(sink))
        with pytest.raises(IdempotencyKeyInFlight) as caught:
            recent.reserve(claim(sink))  # the same scope, while the first is in flight
        assert (caught.value.status, caught.value.code) == (409, "idempotency_key_in_flight")
        recent.reserve(claim(sink, subject="bob")).release()  # another scope is free

        async def accept(n: int) -> Receipt:
            return {"n": n}

        assert await first.once(lambda: accept(1)) == {"n": 1}
        assert await recent.reserve(claim(sink)).once(lambda: accept(2)) == {"n": 1}  # replayed
        assert recent.replays == 1
        with pytest.raises(IdempotencyKeyReused):
            await recent.reserve(claim(sink, body=b"{}\n")).once(lambda: accept(3))
        # a released scope (its request failed) is free for the retry
        failed = recent.reserve(claim(sink, key=b"bad"))
        failed.release()
        failed.release()  # more than once is harmless
        assert await recent.reserve(claim(sink, key=b"bad")).once(lambda: accept(4)) == {"n": 4}
        # past the capacity the oldest settled scope is forgotten
        assert await recent.reserve(claim(sink, key=b"k3")).once(lambda: accept(5)) == {"n": 5}
        assert await recent.reserve(claim(sink)).once(lambda: accept(6)) == {"n": 6}
        await sink.close()

    run(main)


def test_recent_receipts_expire_after_ttl(tmp_path: Path) -> None:
    async def main() -> None:
        sink = file_sink(tmp_path / "out.ndjson")
        recent = RecentReceipts(capacity=100, ttl=0.05)

        async def accept() -> Receipt:
            return {"at": time.monotonic()}

        first = await recent.reserve(claim(sink)).once(accept)
        assert await recent.reserve(claim(sink)).once(accept) == first
        stored_at = first["at"]
        assert isinstance(stored_at, float)
        await asyncio.to_thread(poll_until, lambda: time.monotonic() - stored_at > 0.05, 5, "the ttl")
        assert await recent.reserve(claim(sink)).once(accept) != first
        await sink.close()

    run(main)


# --- the file sink ------------------------------------------------------------------------


def test_the_file_sink_keeps_each_callers_request_once(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    alices, bobs = b'{"who": "alice"}\n', b'{"who": "bob"}\n'

    async def main() -> None:
        sink = file_sink(path)
        try:
            first = await deliver(sink, [alices], key=b"k", subject="alice")
            assert await deliver(sink, [alices], key=b"k", subject="alice") == first
            bob = await deliver(sink, [bobs], key=b"k", subject="bob")
            assert bob["offset"] == len(alices)
            with pytest.raises(IdempotencyKeyReused):
                await deliver(sink, [bobs], key=b"k", subject="alice")
            assert sink.recent.replays == 1
        finally:
            await sink.close()

    run(main)
    assert path.read_bytes() == alices + bobs


def test_the_file_sink_answers_409_while_the_key_is_in_flight_and_frees_it_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"

    async def main() -> None:
        sink = file_sink(path)
        try:
            held = request_for(sink, key=b"k", subject="alice")
            delivery = sink.open(held, False, None)
            with pytest.raises(IdempotencyKeyInFlight):
                await deliver(sink, [b"{}\n"], key=b"k", subject="alice")
            delivery.abort()  # the first request failed: its key is free again
            assert (await deliver(sink, [b"{}\n"], key=b"k", subject="alice"))["offset"] == 0
        finally:
            await sink.close()

    run(main)
    assert path.read_bytes() == b"{}\n"
