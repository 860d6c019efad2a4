"""The file sink after a crash, and large bodies written once into the end of the file.

A crashed writer is played by opening the file ourselves, as another worker would, and
writing past its committed length without recording it (closing the file lets go of its
lock, as dying does); the processes that really die are in ``test_e2e_filesink_faults.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from support.sink_exchange import (
    MiB, NO_LIMIT, committed, make_request, make_sink, ndjson, post, run,
)

from relay.flowcontrol import RequestBody
from relay.sinks._repair import COMMITTED
from relay.sinks.base import Receipt
from relay.sinks.file import STAGE_BYTES, FileSink

ROTATED = re.compile(r"^archive\.(\d{8}T\d{6}Z)(?:\.(\d+))?\.raw$")


def commit(path: Path, data: bytes) -> None:
    """``data`` appended as relay leaves a complete append: its length recorded."""
    with path.open("ab") as f:
        f.write(data)
    os.setxattr(path, COMMITTED, b"%d" % path.stat().st_size)


def die_mid_append(path: Path, data: bytes) -> None:
    """Another worker's append that never finished: written under the lock, not recorded."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
    finally:
        os.close(fd)


def torn(path: Path) -> bytes:
    torn_path = Path(f"{path}.torn")
    return torn_path.read_bytes() if torn_path.exists() else b""


def payload(writer: int, size: int) -> bytes:
    unit = b"<%06d>" % writer
    return (unit * (size // len(unit) + 1))[:size]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait, without blocking the loop, until ``condition()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def offset(receipt: Receipt) -> int:
    where = receipt["archive"] if "archive" in receipt else receipt
    assert isinstance(where, dict)
    value = where["offset"]
    assert isinstance(value, int)
    return value


# --- repair ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ndjson", "raw"])
def test_a_torn_end_is_moved_to_the_torn_file_when_the_sink_starts(
    tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "archive.log"
    good = ndjson([{"n": 1}, {"n": 2}])
    commit(path, good)
    # an append killed halfway: one whole line of it (never acknowledged) and a torn one
    leftover = b'{"n":3}\n{"n":4,"ha'
    die_mid_append(path, leftover)

    async def main() -> tuple[bytes, int]:
        sink = make_sink(path, format=fmt)
        repaired = path.read_bytes()  # before any request
        result = await post(sink, [b'{"n":5}\n'], 8)
        await sink.close()
        return repaired, offset(result.receipt["sinks"])

    with caplog.at_level(logging.WARNING, "relay.sinks.file"):
        repaired, at = run(main)
    assert repaired == good
    assert torn(path) == leftover
    assert f"removed {len(leftover)} bytes" in caplog.text
    assert at == len(good)
    assert path.read_bytes() == good + b'{"n":5}\n'
    assert committed(path) == len(good) + 8


@pytest.mark.parametrize(("fmt", "kept"), [
    ("ndjson", b'{"a":1}\n{"b":2}\n'),  # to its last newline
    ("raw", b'{"a":1}\n{"b":2}\n{"c":'),  # nothing tells a raw file's torn end: taken whole
])
def test_a_file_without_a_record_is_judged_by_its_format(tmp_path: Path, fmt: str, kept: bytes) -> None:
    path = tmp_path / "archive.log"
    original = b'{"a":1}\n{"b":2}\n{"c":'
    path.write_bytes(original)  # written by something other than relay

    async def main() -> None:
        await make_sink(path, format=fmt).close()

    run(main)
    assert path.read_bytes() == kept
    assert torn(path) == original[len(kept):]
    assert committed(path) == len(kept)


def test_a_file_shorter_than_its_record_keeps_what_it_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its end was lost before it reached the disk (a power cut with fsync = "never")."""
    path = tmp_path / "archive.raw"
    path.write_bytes(b"x" * 100)
    os.setxattr(path, COMMITTED, b"150")

    async def main() -> None:
        await make_sink(path, format="raw").close()

    with caplog.at_level(logging.WARNING, "relay.sinks.file"):
        run(main)
    assert path.read_bytes() == b"x" * 100
    assert committed(path) == 100
    assert "50 bytes shorter than its committed length" in caplog.text


@pytest.mark.parametrize("fsync", ["never", "always"])  # the next append from the loop / in a thread
def test_a_dead_workers_torn_append_is_cut_before_the_next_one(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "archive.ndjson"

    async def main() -> int:
        sink = make_sink(path, fsync=fsync)
        assert (await post(sink, [b"[1]\n"], 4)).status == 200
        die_mid_append(path, b"[2]\n[3")
        second = await post(sink, [b"[4]\n"], 4)
        await sink.close()
        return offset(second.receipt["sinks"])

    assert run(main) == 4
    assert path.read_bytes() == b"[1]\n[4]\n"
    assert torn(path) == b"[2]\n[3"


def test_a_live_worker_mid_append_is_never_cut(tmp_path: Path) -> None:
    path = tmp_path / "archive.ndjson"
    commit(path, b"[0]\n")

    async def main() -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # another worker, alive, mid-append
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b'[1]\n["half')
            sink = make_sink(path)  # starts meanwhile: it must not repair what is being written
            assert path.read_bytes() == b'[0]\n[1]\n["half'
            task = asyncio.get_running_loop().create_task(post(sink, [b"[3]\n"], 4))
            done, _ = await asyncio.wait([task], timeout=0.2)
            assert not done  # it waits for the lock
            os.write(fd, b' done"]\n')
            os.setxattr(fd, COMMITTED, b"%d" % os.fstat(fd).st_size)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        result = await task
        await sink.close()
        return offset(result.receipt["sinks"])

    assert run(main) == len(b'[0]\n[1]\n["half done"]\n')
    assert path.read_bytes() == b'[0]\n[1]\n["half done"]\n[3]\n'
    assert torn(path) == b""


# --- large bodies: written once, into the end of the file -----------------------------------

def staged(path: Path) -> list[str]:
    """The unlinked temporary files this process holds open for bodies bound for ``path``."""
    prefix = str(path.parent / f".{path.name}.")
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if name.startswith(prefix) and name.endswith(" (deleted)"):
            names.append(name)
    return names


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_a_large_body_is_written_into_the_file_as_it_streams(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "archive.raw"
    commit(path, b"before")
    body = payload(1, 8 * MiB)
    half = len(body) // 2

    async def pieces() -> AsyncIterator[bytes]:
        for piece in chunks(body[:half], 65536):
            yield piece
        # half the body is already in the file, past its committed length, and staged nowhere
        await until(lambda: path.stat().st_size >= 6 + half - 3 * MiB, "the body to reach the file")
        assert committed(path) == 6
        assert staged(path) == []
        for piece in chunks(body[half:], 65536):
            yield piece

    async def main() -> tuple[int, int, dict[str, int]]:
        sink = make_sink(path, format="raw", fsync=fsync)
        result = await post(sink, pieces(), len(body))
        assert result.status == 200, result.error
        stats = sink.stats()
        await sink.close()
        return offset(result.receipt["sinks"]), result.receipt["bytes"], stats

    at, size, stats = run(main)
    assert (at, size) == (6, len(body))
    assert path.read_bytes() == b"before" + body
    assert committed(path) == 6 + len(body)
    if fsync == "always":
        assert stats["fsyncs"] == 1  # once for the whole body


@pytest.mark.parametrize("keyed", [False, True])
def test_a_small_body_waits_for_a_held_large_one_but_not_for_a_staged_one(tmp_path: Path, keyed: bool) -> None:
    """A body with an Idempotency-Key is staged, never held (see relay.sinks.file)."""
    path = tmp_path / "archive.raw"
    big = payload(1, 3 * MiB)

    async def main() -> tuple[int, int]:
        sink = make_sink(path, format="raw")
        go_on = asyncio.Event()

        async def big_pieces() -> AsyncIterator[bytes]:
            for piece in chunks(big[:2 * MiB], 65536):  # past STAGE_BYTES
                yield piece
            await go_on.wait()
            for piece in chunks(big[2 * MiB:], 65536):
                yield piece

        loop = asyncio.get_running_loop()
        big_task = loop.create_task(post(sink, big_pieces(), len(big), key=b"big-1" if keyed else None))
        if keyed:
            await until(lambda: staged(path), "the big body to be staged")
        else:
            await until(lambda: path.exists() and path.stat().st_size > STAGE_BYTES, "the big body in the file")
        small_task = loop.create_task(post(sink, [b"small"], 5))
        done, _ = await asyncio.wait([small_task], timeout=None if keyed else 0.2)
        assert bool(done) == keyed  # a held end makes it wait; a staged body does not
        go_on.set()
        big_result, small_result = await big_task, await small_task
        await sink.close()
        return offset(big_result.receipt["sinks"]), offset(small_result.receipt["sinks"])

    big_at, small_at = run(main)
    assert (big_at, small_at) == ((5, 0) if keyed else (0, len(big)))
    stored = path.read_bytes()
    assert stored[big_at:big_at + len(big)] == big and stored[small_at:small_at + 5] == b"small"


async def deliver(sinks: Sequence[FileSink], body: bytes, paused: asyncio.Event | None = None) -> list[Receipt]:
    """What ``Exchange`` does for a flow teeing to ``sinks``: each piece to each, then finish all."""
    request = make_request(RequestBody(None, NO_LIMIT, complete=True), len(body))
    deliveries = [sink.open(request, False, None) for sink in sinks]
    try:
        for n, piece in enumerate(chunks(body, 256 * 1024)):
            if n == 8 and paused is not None:
                await paused.wait()
            for delivery in deliveries:
                await delivery.write(piece)
        return list(await asyncio.gather(*(d.finish() for d in deliveries)))
    except BaseException:
        for delivery in deliveries:
            delivery.abort()
        raise


def test_no_body_waits_for_a_file_while_holding_another(tmp_path: Path) -> None:
    """Flows teeing to two files in opposite orders, with large bodies, never deadlock: a body
    that finds a file's end taken stages its copy, and a finished body lets go of its file
    while it waits for the other."""
    x_path, y_path = tmp_path / "x.raw", tmp_path / "y.raw"
    bodies = [payload(n, 3 * MiB) for n in range(3)]

    async def main() -> list[list[Receipt]]:
        x, y = make_sink(x_path, format="raw"), make_sink(y_path, format="raw")
        loop = asyncio.get_running_loop()
        holding_y = asyncio.Event()
        c = loop.create_task(deliver([y], bodies[2], holding_y))  # holds y's end, then pauses
        await until(lambda: y_path.exists() and y_path.stat().st_size > STAGE_BYTES, "y held")
        a = loop.create_task(deliver([x, y], bodies[0]))  # holds x; y's copy staged, waits for y
        b = loop.create_task(deliver([y, x], bodies[1]))  # both staged
        # a's x is committed and let go while a waits for y: another request gets x at once
        small = await asyncio.wait_for(post(x, [b"small"], 5), 30)
        assert small.status == 200, small.error
        holding_y.set()
        results = await asyncio.wait_for(asyncio.gather(a, b, c), 60)
        await x.close()
        await y.close()
        return [*results, [small.receipt["sinks"]]]

    (ax, ay), (by, bx), (cy,), (small,) = run(main)
    xs, ys = x_path.read_bytes(), y_path.read_bytes()
    assert offset(ax) == 0 and offset(small) == len(bodies[0])
    for stored, receipt, body in ((xs, ax, bodies[0]), (xs, bx, bodies[1]), (ys, ay, bodies[0]),
                                  (ys, by, bodies[1]), (ys, cy, bodies[2])):
        assert stored[offset(receipt):offset(receipt) + len(body)] == body
    assert len(xs) == 6 * MiB + 5 and len(ys) == 9 * MiB


@pytest.mark.parametrize("chunked", [False, True])  # length announced / unknown until the end
def test_large_bodies_rotate_whole(tmp_path: Path, chunked: bool) -> None:
    path = tmp_path / "archive.raw"
    limit = 4 * MiB
    sizes = [MiB + MiB // 2, 2 * MiB + 1, 3 * MiB, MiB + 7, 5 * MiB, 2 * MiB]
    bodies = [payload(n, size) for n, size in enumerate(sizes)]

    async def main() -> None:
        sink = make_sink(path, format="raw", rotate=limit)
        for body in bodies:
            result = await post(sink, chunks(body, 65536), len(body), chunked=chunked)
            assert result.status == 200, result.error
        await sink.close()

    run(main)
    rotated = sorted((m.group(1), int(m.group(2) or 0), name) for name in os.listdir(tmp_path)
                     if (m := ROTATED.match(name)))
    files = [(tmp_path / name).read_bytes() for *_, name in rotated] + [path.read_bytes()]
    assert b"".join(files) == b"".join(bodies)  # in order, nothing lost, nothing twice
    ends = {sum(sizes[:n]) for n in range(len(sizes) + 1)}
    start = 0
    for data in files:
        assert start in ends and start + len(data) in ends  # split only between bodies
        assert len(data) <= limit or (start + len(data) - start) in sizes
        start += len(data)
