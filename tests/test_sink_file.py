"""The file sink, driven through its delivery (open, write, finish, answer) with real files
and real sockets (``support.sink_exchange``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.sink_exchange import (
    MiB, Result, committed, make_sink, names_in_dir, ndjson, post, post_pieces, run,
)
from support.tmpfs import small_tmpfs as tmpfs

from relay.config import FileSinkConfig
from relay.errors import InsufficientStorage, RelayError, ServiceUnavailable
from relay.flowcontrol import ClientGone
from relay.sinks._repair import COMMITTED
from relay.sinks.file import (
    INLINE_BYTES, MAX_RECORD_BYTES, STAGE_BYTES, FileSink, disk_error, rotated_name,
)
from relay.timers import Deadlines

ROTATED = re.compile(r"^archive\.(\d{8}T\d{6}Z)(?:\.(\d+))?\.ndjson$")

# --- NDJSON across read boundaries ----------------------------------------------------------

SAMPLE = b'{"a":1,"s":"caf\xc3\xa9\\n"}\n[1,2,{"b":null}]\n"\xe2\x82\xac"\n42'


def test_ndjson_every_split_point(tmp_path: Path) -> None:
    path = tmp_path / "archive.ndjson"
    splits = [[SAMPLE[:i], SAMPLE[i:]] for i in range(1, len(SAMPLE))]
    splits.append([SAMPLE[i:i + 1] for i in range(len(SAMPLE))])

    async def main() -> list[Result]:
        sink = make_sink(path)
        results = [await post_pieces(sink, pieces) for pieces in splits]
        await sink.close()
        return results

    results = run(main)
    stored = SAMPLE + b"\n"
    assert path.read_bytes() == stored * len(splits)
    for n, result in enumerate(results):
        assert result.status == 200, result.error
        assert result.receipt["records"] == 4
        assert result.receipt["bytes"] == len(SAMPLE)  # what the client sent; relay adds the final "\n"
        assert result.receipt["sinks"]["archive"] == {"file": "archive.ndjson", "offset": n * len(stored)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=6), final_newline=st.booleans(), data=st.data())
def test_ndjson_any_split(values: list[Any], final_newline: bool, data: st.DataObject) -> None:
    body = ndjson(values)
    if not final_newline:
        body = body[:-1]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=8)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "archive.ndjson"

        async def main() -> Result:
            sink = make_sink(path)
            result = await post_pieces(sink, pieces)
            await sink.close()
            return result

        result = run(main)
        assert result.status == 200, result.error
        assert result.receipt["records"] == len(values)
        assert path.read_bytes() == ndjson(values)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.binary(max_size=6).filter(lambda b: b"\n" not in b), min_size=1, max_size=5),
       cut=st.integers(0, 40))
def test_ndjson_first_bad_line_is_named(lines: list[bytes], cut: int) -> None:
    body = b"\n".join(lines) + b"\n"
    bad = None
    for n, line in enumerate(lines, 1):
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            bad = n
            break
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "archive.ndjson"
        path.write_bytes(b'{"before":true}\n')

        async def main() -> Result:
            sink = make_sink(path)
            result = await post_pieces(sink, [p for p in (body[:cut], body[cut:]) if p])
            await sink.close()
            return result

        result = run(main)
        if bad is None:
            assert result.status == 200
            assert path.read_bytes() == b'{"before":true}\n' + body
        else:
            assert result.status == 400
            assert str(result.error).startswith(f"line {bad}: not valid JSON (")
            assert path.read_bytes() == b'{"before":true}\n'


@pytest.mark.parametrize(("body", "detail"), [
    (b'{"a":1}\n\n{"b":2}\n', "line 2: not valid JSON (an empty line)"),
    (b'{"a":1}\n{"b":\n', "line 2: not valid JSON (unexpected end of data at column 6)"),
    (b"\xff\n", "line 1: not valid JSON (str is not valid UTF-8: surrogates not allowed at column 1)"),
    (b'"' + b"x" * MAX_RECORD_BYTES + b'"\n', f"line 1: longer than {MAX_RECORD_BYTES} bytes"),
])
def test_bad_ndjson_is_400_and_file_unchanged(tmp_path: Path, body: bytes, detail: str) -> None:
    path = tmp_path / "archive.ndjson"
    path.write_bytes(b"[0]\n")

    async def main() -> Result:
        sink = make_sink(path)
        result = await post(sink, [body[i:i + 4096] for i in range(0, len(body), 4096)], len(body))
        await sink.close()
        return result

    result = run(main)
    assert result.status == 400
    assert str(result.error) == detail
    assert (result.receipt["error"], result.receipt["detail"]) == ("bad_request", detail)
    assert path.read_bytes() == b"[0]\n"
    assert names_in_dir(path) == ["archive.ndjson"]


def test_bad_line_after_staging_to_disk(tmp_path: Path) -> None:
    """A body large enough to be staged in a temporary file, rejected at its last line."""
    path = tmp_path / "archive.ndjson"
    good = ndjson({"n": n, "pad": "x" * 100} for n in range(3 * STAGE_BYTES // 100))
    body = good + b"{oops}\n"
    lines = good.count(b"\n") + 1

    async def main() -> Result:
        sink = make_sink(path)
        result = await post(sink, [body[i:i + 65536] for i in range(0, len(body), 65536)], len(body))
        await sink.close()
        return result

    result = run(main)
    assert result.status == 400
    assert str(result.error) == f"line {lines}: not valid JSON (unexpected character, expected a string key at column 2)"
    # the body streamed into the file, and was cut off; no staging file either
    assert names_in_dir(path) == ["archive.ndjson"]
    assert path.read_bytes() == b""
    assert committed(path) == 0


def test_receipt_and_raw_format(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "data.bin"  # the directory is created
    body = bytes(range(256)) * 10

    async def main() -> list[Result]:
        sink = make_sink(path, format="raw")
        results = [await post(sink, [body], len(body)), await post(sink, [], 0)]
        await sink.close()
        return results

    first, empty = run(main)
    assert first.status == 200
    assert first.headers[b"content-type"] == b"application/json"
    assert set(first.receipt) == {"request_id", "bytes", "sinks"}  # no "records" for raw
    assert first.receipt["bytes"] == len(body)
    assert first.receipt["request_id"] == first.headers[b"x-relay-request-id"].decode()
    assert first.receipt["sinks"] == {"archive": {"file": "data.bin", "offset": 0}}
    assert empty.status == 200 and empty.receipt["bytes"] == 0
    assert empty.receipt["sinks"]["archive"]["offset"] == len(body)
    assert path.read_bytes() == body
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- serialisation ---------------------------------------------------------------------------

def payload(writer: int, size: int) -> bytes:
    """A body nobody else sends: the writer's number repeated, so any mixing shows."""
    unit = b"<%06d>" % writer
    return (unit * (size // len(unit) + 1))[:size]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_concurrent_requests_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "archive.raw"
    # appended from the loop, from memory in a thread, and from a staging file
    sizes = [17, INLINE_BYTES, INLINE_BYTES + 1, STAGE_BYTES + 12345, 3 * STAGE_BYTES] * 8
    bodies = [payload(n, size) for n, size in enumerate(sizes)]

    async def main() -> list[Result]:
        sink = make_sink(path, format="raw")
        results = await asyncio.gather(*(post(sink, chunks(b, 7919), len(b)) for b in bodies))
        await sink.close()
        return list(results)

    results = run(main)
    stored = path.read_bytes()
    assert len(stored) == sum(sizes)
    spans = []
    for body, result in zip(bodies, results):
        assert result.status == 200, result.error
        offset = result.receipt["sinks"]["archive"]["offset"]
        assert stored[offset:offset + len(body)] == body
        spans.append((offset, offset + len(body)))
    spans.sort()
    assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:]))  # back to back
    assert names_in_dir(path) == ["archive.raw"]


@pytest.mark.parametrize("fsync", ["always", "never"])  # appends in threads / small ones on the loop
def test_two_sinks_on_one_file_take_turns(tmp_path: Path, fsync: str) -> None:
    """An old and a new sink during a reload (or two workers) append to the same file."""
    path = tmp_path / "archive.raw"
    # the larger bodies are copied from their staging file in several writes
    bodies = [payload(n, (n % 4) * STAGE_BYTES // 2 + 1000 + n) for n in range(32)]

    async def main() -> list[Result]:
        sinks = [make_sink(path, format="raw", fsync=fsync) for _ in range(2)]
        results = await asyncio.gather(*(
            post(sinks[n % 2], chunks(b, 65536), len(b)) for n, b in enumerate(bodies)
        ))
        for sink in sinks:
            await sink.close()
        return list(results)

    results = run(main)
    stored = path.read_bytes()
    assert len(stored) == sum(map(len, bodies))
    for body, result in zip(bodies, results):
        offset = result.receipt["sinks"]["archive"]["offset"]
        assert stored[offset:offset + len(body)] == body


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_waits_for_another_writer_holding_the_lock(tmp_path: Path, fsync: str) -> None:
    """Another worker mid-append holds the file's flock: this sink's append waits for it."""
    path = tmp_path / "archive.ndjson"
    other = b'"another worker"\n'

    async def main() -> Result:
        sink = make_sink(path, fsync=fsync)
        await post(sink, [b"[0]\n"], 4)  # the sink has the file open now
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            task = asyncio.get_running_loop().create_task(post_pieces(sink, [b"[1]\n"]))
            # with the lock ignored the request would be answered at once; give it the chance
            done, _ = await asyncio.wait([task], timeout=0.2)
            assert not done
            os.write(fd, other)
            os.setxattr(fd, COMMITTED, b"%d" % (4 + len(other)))  # as a worker ends its append
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        result = await task
        await sink.close()
        return result

    result = run(main)
    assert result.status == 200
    assert result.receipt["sinks"]["archive"]["offset"] == 4 + len(other)
    assert path.read_bytes() == b"[0]\n" + other + b"[1]\n"


# --- rotation ----------------------------------------------------------------------------------

def test_rotated_name_scheme() -> None:
    when = 1704164645.75  # 2024-01-02 03:04:05.75 UTC
    assert rotated_name("/d/archive.ndjson", when) == "/d/archive.20240102T030405Z.ndjson"
    assert rotated_name("/d/archive.ndjson", when, 2) == "/d/archive.20240102T030405Z.2.ndjson"
    assert rotated_name("/d/a.tar.gz", when) == "/d/a.tar.20240102T030405Z.gz"
    assert rotated_name("/d/data", when) == "/d/data.20240102T030405Z"
    assert rotated_name("/d/.hidden", when, 1) == "/d/.hidden.20240102T030405Z.1"


def _files_in_order(directory: Path) -> list[Path]:
    """Rotated files oldest first (by stamp, then .N), then the active file."""
    rotated = []
    for name in os.listdir(directory):
        if name == "archive.ndjson":
            continue
        match = ROTATED.match(name)
        assert match, f"{name} does not follow NAME.YYYYmmddTHHMMSSZ[.N].EXT"
        rotated.append((match.group(1), int(match.group(2) or 0), directory / name))
    return [p for *_, p in sorted(rotated)] + [directory / "archive.ndjson"]


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_rotation_by_size(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "archive.ndjson"
    limit = 4096
    # request n carries records {"req": n, "i": 0..}; some requests alone exceed the limit
    sizes = [3, 40, 7, 90, 1, 25, 60, 2, 33, 5] * 3

    def body(n: int) -> bytes:
        return ndjson({"req": n, "i": i, "pad": "p" * 40} for i in range(sizes[n]))

    async def main() -> list[Result]:
        sink = make_sink(path, rotate=limit, fsync=fsync)
        results = [await post(sink, chunks(body(n), 1000), len(body(n))) for n in range(len(sizes))]
        assert sink.stats()["rotations"] == len(os.listdir(tmp_path)) - 1
        await sink.close()
        return results

    results = run(main)
    assert all(r.status == 200 for r in results)
    seen: list[int] = []
    for file in _files_in_order(tmp_path):
        data = file.read_bytes()
        requests = [orjson.loads(line)["req"] for line in data.splitlines()]
        held = sorted(set(requests), key=requests.index)
        # each request whole, contiguous and in one file; a file over the limit holds one request
        assert b"".join(body(n) for n in held) == data
        assert len(data) <= limit or len(held) == 1
        seen.extend(held)
    assert seen == list(range(len(sizes)))  # oldest file first, .N in order of rotation
    names = os.listdir(tmp_path)
    assert len(names) > 10
    assert any(re.search(r"Z\.\d+\.ndjson$", name) for name in names)  # several rotations in one second


def test_rotation_by_interval(tmp_path: Path) -> None:
    path = tmp_path / "archive.ndjson"

    async def main() -> None:
        sink = make_sink(path, rotate_interval=1e-9)  # due at every append to a non-empty file
        for n in range(3):
            body = ndjson([{"req": n}])
            assert (await post(sink, [body], len(body))).status == 200
        await sink.close()

    run(main)
    files = _files_in_order(tmp_path)
    assert [f.read_bytes() for f in files] == [ndjson([{"req": n}]) for n in range(3)]


def test_file_moved_away_is_reopened(tmp_path: Path) -> None:
    """An operator (or another worker) renamed the file: the next append recreates the path."""
    path = tmp_path / "archive.ndjson"
    moved = tmp_path / "elsewhere.ndjson"

    async def main() -> list[Result]:
        sink = make_sink(path)
        first = await post(sink, [b"[1]\n"], 4)
        path.rename(moved)
        second = await post(sink, [b"[2]\n"], 4)
        await sink.close()
        return [first, second]

    first, second = run(main)
    assert moved.read_bytes() == b"[1]\n"
    assert path.read_bytes() == b"[2]\n"
    assert second.receipt["sinks"]["archive"]["offset"] == 0


# --- fsync modes -----------------------------------------------------------------------------

def test_fsync_always_syncs_every_append(tmp_path: Path) -> None:
    async def main() -> dict[str, int]:
        sink = make_sink(tmp_path / "archive.ndjson", fsync="always")
        for n in range(5):
            await post(sink, [b"[%d]\n" % n], 4)
        stats = sink.stats()
        await sink.close()
        return stats

    assert run(main)["fsyncs"] == 5


def test_fsync_never(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, int], float]:
        sink = make_sink(tmp_path / "archive.ndjson", fsync="never")
        for n in range(5):
            await post(sink, [b"[%d]\n" % n], 4)
        deadline = sink.deadline
        await sink.close()
        return sink.stats(), deadline

    stats, deadline = run(main)
    assert stats["fsyncs"] == 0 and deadline == 0.0


def _resident_bytes(path: Path) -> int:
    """How much of ``path`` the page cache holds (util-linux fincore)."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.parametrize("key", [None, b"staged-then-copied"])
def test_fsync_always_leaves_a_large_body_out_of_memory(tmp_path: Path, key: bytes | None) -> None:
    kind = subprocess.run(["stat", "-f", "--format=%T", str(tmp_path)], capture_output=True, text=True, check=True)
    if kind.stdout.strip() == "tmpfs":
        pytest.skip("tmpfs pages are the file: they cannot be dropped")
    path = tmp_path / "archive.raw"
    size = 24 * MiB

    async def main() -> Result:
        sink = make_sink(path, format="raw", fsync="always")
        result = await post(sink, (bytes([n]) * MiB for n in range(24)), size, key=key)
        await sink.close()
        return result

    result = run(main)
    assert result.status == 200 and path.stat().st_size == size
    # on disk, so dropped from memory (a held body streamed in; a keyed one staged, then copied)
    assert _resident_bytes(path) < MiB
    with path.open("rb") as f:
        assert all(f.read(MiB) == bytes([n]) * MiB for n in range(24))


def test_fsync_interval_is_periodic_not_per_request(tmp_path: Path) -> None:
    interval = 5.0

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        sink = make_sink(tmp_path / "archive.ndjson", fsync="interval", fsync_interval=interval)
        counts = []
        started = loop.time()
        for n in range(20):
            await post(sink, [b"[%d]\n" % n], 4)
        # the flush is due one interval after the first unsynced append, not per request
        assert started + interval <= sink.deadline <= loop.time() + interval
        counts.append(sink.stats()["fsyncs"])
        sink.on_deadline()  # what the deadline sweep calls when it is due
        assert sink.flushing is not None
        await sink.flushing
        counts.append(sink.stats()["fsyncs"])
        sink.on_deadline()  # nothing new: nothing to sync
        assert sink.flushing is not None
        await sink.flushing
        counts.append(sink.stats()["fsyncs"])
        await post(sink, [b"[20]\n"], 5)
        await sink.close()  # syncs what the last flush did not cover
        counts.append(sink.stats()["fsyncs"])
        return counts

    assert run(main) == [0, 1, 1, 2]


class _Probe:
    """Another object the deadline sweep watches: tells the test when a sweep has run."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = asyncio.Event()

    def on_deadline(self) -> None:
        self.fired.set()


def test_fsync_interval_driven_by_the_deadline_sweep(tmp_path: Path) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, tick=0.01)
        config = FileSinkConfig(name="archive", path=str(tmp_path / "a.ndjson"), fsync_interval=0.05)
        sink = FileSink(config, deadlines)  # "interval" is the default
        deadlines.start()
        written = loop.time()
        await post(sink, [b"[1]\n"], 4)
        assert sink.deadline >= written + 0.05
        # a probe due at the same moment expires in the same sweep as the sink
        probe = _Probe(sink.deadline)
        deadlines.watch(probe)
        await probe.fired.wait()
        assert sink.flushing is not None
        await sink.flushing
        fsyncs = sink.stats()["fsyncs"]
        deadlines.stop()
        await sink.close()
        return fsyncs

    assert run(main) == 1


# --- failures leave nothing --------------------------------------------------------------------

def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [1000, 5 * STAGE_BYTES])  # staged in memory / on disk
def test_client_gone_midway_leaves_nothing(tmp_path: Path, size: int) -> None:
    path = tmp_path / "archive.raw"
    path.write_bytes(b"kept")
    body = payload(1, size)
    gc.collect()  # earlier tests' unreachable files and sockets must not close while we count
    fds_before = _open_fds()

    async def main() -> Result:
        sink = make_sink(path, format="raw")
        # the client announces one byte more than it sends, then hangs up
        result = await post(sink, chunks(body, 65536), size + 1, hang_up=True)
        await sink.close()
        return result

    result = run(main)  # on exit the executor has finished closing staging files
    assert isinstance(result.error, ClientGone)
    assert path.read_bytes() == b"kept"
    assert names_in_dir(path) == ["archive.raw"]
    assert _open_fds() == fds_before


def test_body_over_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "archive.raw"
    body = payload(2, 3 * STAGE_BYTES)

    async def main() -> Result:
        sink = make_sink(path, format="raw")
        result = await post(sink, chunks(body, 65536), len(body), max_bytes=2 * STAGE_BYTES)
        await sink.close()
        return result

    result = run(main)
    assert result.status == 413
    assert result.receipt["error"] == "body_too_large"
    assert names_in_dir(path) == ["archive.raw"]
    assert path.read_bytes() == b"" and committed(path) == 0


def test_closed_sink_refuses(tmp_path: Path) -> None:
    async def main() -> Result:
        sink = make_sink(tmp_path / "archive.ndjson")
        await sink.close()
        return await post(sink, [b"[1]\n"], 4)

    result = run(main)
    assert result.status == 503
    assert isinstance(result.error, ServiceUnavailable) and result.error.sink == "archive"
    assert result.headers[b"retry-after"] == b"1"


# --- bounded memory ------------------------------------------------------------------------------

def test_50_mib_body_streams_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "archive.raw"
    size = 50 * MiB
    piece = 64 * 1024
    expected = hashlib.sha256()

    def generate() -> Iterator[bytes]:
        for n in range(size // piece):
            data = n.to_bytes(8, "big") * (piece // 8)
            expected.update(data)
            yield data

    async def main() -> Result:
        sink = make_sink(path, format="raw")
        result = await post(sink, generate(), size)
        await sink.close()
        return result

    tracemalloc.start()
    try:
        result = run(main)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == 200 and result.receipt["bytes"] == size
    # one staging buffer, one copy buffer, the body's high-water mark and some change
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB"
    stored = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            stored.update(block)
    assert stored.digest() == expected.digest()


# --- disk errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "kind", "status"), [
    (errno.ENOSPC, InsufficientStorage, 507),
    (errno.EDQUOT, InsufficientStorage, 507),
    (errno.EIO, ServiceUnavailable, 503),
    (errno.EROFS, ServiceUnavailable, 503),
    (errno.EACCES, ServiceUnavailable, 503),
])
def test_disk_error_mapping(code: int, kind: type[RelayError], status: int) -> None:
    err = disk_error(OSError(code, os.strerror(code)), "archive")
    assert type(err) is kind
    assert err.status == status
    assert getattr(err, "sink") == "archive"
    assert os.strerror(code) in err.detail


def test_unusable_directory_is_503(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")

    async def main() -> Result:
        sink = make_sink(tmp_path / "file" / "archive.ndjson")  # its "directory" is a file
        return await post(sink, [b"[1]\n"], 4)

    result = run(main)
    assert result.status == 503
    assert result.headers[b"retry-after"] == b"1"


@pytest.mark.skipif(not os.access("/dev/full", os.W_OK), reason="no /dev/full")
def test_device_full_is_507() -> None:
    """/dev/full answers every write with ENOSPC: a real full-disk error without mounting."""
    async def main() -> Result:
        sink = make_sink(Path("/dev/full"), format="raw")
        result = await post(sink, [b"data"], 4)
        await sink.close()
        return result

    result = run(main)
    assert result.status == 507
    assert isinstance(result.error, InsufficientStorage)
    assert result.receipt["error"] == "sink_full"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own."""
    with tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


@pytest.mark.parametrize("size", [200 * 1024, 2 * STAGE_BYTES])  # fails in the append / while staging
def test_full_disk_is_507_and_leaves_nothing(small_tmpfs: Path, size: int) -> None:
    path = small_tmpfs / "archive.raw"
    path.write_bytes(payload(0, 100 * 1024))
    before = path.read_bytes()

    async def main() -> list[Result]:
        sink = make_sink(path, format="raw", fsync="always")
        results = [await post(sink, chunks(payload(1, size), 65536), size)]
        results.append(await post(sink, [b"small"], 5))  # room enough for this one
        await sink.close()
        return results

    full, small = run(main)
    assert full.status == 507
    assert small.status == 200 and small.receipt["sinks"]["archive"]["offset"] == len(before)
    assert path.read_bytes() == before + b"small"
    assert names_in_dir(path) == ["archive.raw"]


def test_read_only_filesystem_is_503(small_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)

    async def main() -> Result:
        return await post(make_sink(small_tmpfs / "archive.raw", format="raw"), [b"x"], 1)

    result = run(main)
    assert result.status == 503
    assert isinstance(result.error, ServiceUnavailable)
    assert "Read-only file system" in result.error.detail
