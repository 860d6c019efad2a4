"""Faults under file sinks, against real relayd processes: SIGKILL mid-append and a restart,
a worker of several killed mid-append, a full file system.

Checked after every fault: each acknowledged body is in its file at the offset its receipt
names; the file ends at its committed length; an NDJSON file holds only whole JSON lines,
none of them from the body that was being written when relayd died.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from support import Relayd, Response, free_port, poll_until
from support.procs import ROOT, child_env
from support.rawhttp import Address, ConnectionClosed, RawConnection, exchange, request_bytes
from support.tmpfs import small_tmpfs as tmpfs

from relay.sinks._repair import COMMITTED

MiB = 1024 * 1024
BIG = b"<BIG>"  # the unit of the body relayd is killed in the middle of


def config(workdir: Path, data: Path, fsync: str, workers: int = 1) -> str:
    return f"""\
[server]
listen = ["127.0.0.1:{free_port()}"]
workers = {workers}
admin_socket = "{workdir / 'admin.sock'}"
shutdown_grace = "2s"

[audit]
path = "{workdir / 'audit.jsonl'}"

[sink.events]
type = "file"
path = "{data / 'events.ndjson'}"
fsync = "{fsync}"

[sink.blobs]
type = "file"
path = "{data / 'blobs.raw'}"
format = "raw"
fsync = "{fsync}"

[[flow]]
name = "events"
path = "/events/"
methods = ["POST"]
auth = "none"
sink = "events"
max_body = "64MiB"

[[flow]]
name = "blobs"
path = "/blobs/"
methods = ["POST"]
auth = "none"
sink = "blobs"
max_body = "64MiB"
"""


def post(address: Address, target: str, body: bytes) -> Response | None:
    """One request on a fresh connection; None if relayd was not there to answer."""
    try:
        return exchange(address, request_bytes("POST", target, body=body), timeout=30)
    except (OSError, ConnectionClosed):
        return None


def receipt_offset(response: Response, sink: str) -> int:
    offset = response.json()["sinks"][sink]["offset"]
    assert isinstance(offset, int)
    return offset


def committed(path: Path) -> int:
    return int(os.getxattr(path, COMMITTED))


def uncommitted(path: Path) -> int:
    """Bytes in the file past its committed length: a body being written."""
    try:
        return path.stat().st_size - committed(path)
    except OSError:
        return 0


@dataclass
class Acked:
    """What relayd acknowledged: event ids, and raw bodies by offset."""

    events: list[str] = field(default_factory=list)
    blobs: list[tuple[int, bytes]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # the statuses of answers that were not 2xx
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, response: Response | None, event: str | None = None, blob: bytes | None = None) -> None:
        if response is None:
            return
        with self.lock:
            if response.status != 200:
                self.refused.append(response.status)
            elif event is not None:
                self.events.append(event)
            elif blob is not None:
                self.blobs.append((receipt_offset(response, "blobs"), blob))


class Load:
    """Small events and blobs posted from threads until stopped (or relayd is gone)."""

    def __init__(self, address: Address, acked: Acked, name: str) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address, acked, f"{name}-{n}"), daemon=True)
                         for n in range(3)]
        for thread in self._threads:
            thread.start()

    def _run(self, address: Address, acked: Acked, name: str) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            event = f"{name}-{n}"
            acked.note(post(address, "/events/x", orjson.dumps({"id": event, "pad": "e" * 200}) + b"\n"), event)
            blob = (b"<%s:%d>" % (name.encode(), n)) * 50
            acked.note(post(address, "/blobs/x", blob), blob=blob)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive()


def start_big_bodies(address: Address, data: Path) -> list[RawConnection]:
    """A large NDJSON and a large raw body, each half sent, and waited for until the file
    holds MiBs of it past its committed length."""
    lines = b"".join(orjson.dumps({"id": f"big-{n}", "pad": BIG.decode() * 40}) + b"\n" for n in range(60_000))
    raw = BIG * (24 * MiB // len(BIG))
    connections = []
    for target, body, name in (("/events/big", lines, "events.ndjson"), ("/blobs/big", raw, "blobs.raw")):
        conn = RawConnection(address, timeout=30)
        head = request_bytes("POST", target, [("Content-Length", str(len(body)))])
        conn.send(head + body[:len(body) // 2])
        connections.append(conn)
        poll_until(lambda name=name: uncommitted(data / name) >= 2 * MiB, 30, f"{name} to be part-written")
    return connections


def check(data: Path, acked: Acked) -> None:
    """Nothing acknowledged lost, nothing torn readable, every file at its committed length."""
    events = data / "events.ndjson"
    stored = events.read_bytes()
    assert stored.endswith(b"\n")
    ids = [orjson.loads(line)["id"] for line in stored.splitlines()]  # every line whole JSON
    assert set(acked.events) <= set(ids)
    assert not any(i.startswith("big-") for i in ids)  # the killed body left no record behind
    assert committed(events) == len(stored)
    blobs = data / "blobs.raw"
    stored = blobs.read_bytes()
    for offset, blob in acked.blobs:
        assert stored[offset:offset + len(blob)] == blob
    assert BIG not in stored
    assert committed(blobs) == len(stored)


def test_sigkill_mid_append_and_restart(workdir: Path) -> None:
    data = workdir / "data"
    text = config(workdir, data, fsync="always")
    acked = Acked()
    relayd = Relayd(workdir, text)
    try:
        load = Load(relayd.tcp, acked, "before")
        poll_until(lambda: len(acked.events) >= 20 and len(acked.blobs) >= 20, 30, "appends to be acknowledged")
        big = start_big_bodies(relayd.tcp, data)
        relayd.service.send_signal(signal.SIGKILL)
        relayd.service.wait_exit(10)
        load.stop()
        for conn in big:
            conn.close()
        torn_before = {name: uncommitted(data / name) for name in ("events.ndjson", "blobs.raw")}
        assert all(torn_before.values())
    finally:
        relayd.stop()
    relayd = Relayd(workdir, text, name="relayd-again")
    try:
        check(data, acked)  # repaired before it serves
        for name, size in torn_before.items():
            assert (data / f"{name}.torn").stat().st_size == size
            assert f"removed {size} bytes" in relayd.service.log_text()
        load = Load(relayd.tcp, acked, "after")
        poll_until(lambda: sum(e.startswith("after") for e in acked.events) >= 10, 30, "appends after the restart")
        load.stop()
        check(data, acked)
        assert acked.refused == []
    finally:
        relayd.stop()


def _flock_holder(path: Path) -> int | None:
    """The PID holding an flock on ``path``, from /proc/locks."""
    st = path.stat()
    inode = f":{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and fields[5].endswith(inode):  # a waiter's line has "->" there
            return int(fields[4])
    return None


def _worker_pids(workdir: Path) -> list[int]:
    """The workers' PIDs; none while one of them does not answer (it is being restarted)."""
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(workdir / "admin.sock"), "--json",
                             "status"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
    if result.returncode != 0:
        return []
    return [int(w["pid"]) for w in json.loads(result.stdout)["workers"]]


def test_a_worker_killed_mid_append_never_costs_the_others_a_byte(workdir: Path) -> None:
    """Two workers append to the same files; the one writing a large body is killed while
    the other's appends wait for the file. The survivor's appends must not follow the torn
    end, and the repair must not cut what either worker had committed."""
    data = workdir / "data"
    blobs = data / "blobs.raw"
    acked = Acked()
    relayd = Relayd(workdir, config(workdir, data, fsync="never", workers=2))
    conn = None
    try:
        load = Load(relayd.tcp, acked, "a")
        poll_until(lambda: len(acked.blobs) >= 20, 30, "appends to be acknowledged")
        load.stop()
        # with nobody else appending, the large body takes the file's end at once
        conn = RawConnection(relayd.tcp, timeout=30)
        raw = BIG * (24 * MiB // len(BIG))
        conn.send(request_bytes("POST", "/blobs/big", [("Content-Length", str(len(raw)))]) + raw[:len(raw) // 2])
        poll_until(lambda: uncommitted(blobs) >= 2 * MiB, 30, "the large body to be part-written")
        holder = poll_until(lambda: _flock_holder(blobs), 10, "the worker holding blobs.raw")
        pids = _worker_pids(workdir)
        assert holder in pids
        load = Load(relayd.tcp, acked, "b")  # these wait for the file, in both workers
        os.kill(holder, signal.SIGKILL)
        poll_until(lambda: set(_worker_pids(workdir)) - set(pids), 30, "the killed worker to be restarted",
                   interval=0.2)
        poll_until(lambda: sum(b.startswith(b"<b-") for _, b in acked.blobs) >= 20, 30, "appends after the kill")
        load.stop()
        check(data, acked)
        torn = (data / "blobs.raw.torn").read_bytes()
        assert torn.startswith(BIG) and set(torn) <= set(BIG)  # the killed body's bytes, only they
        assert acked.refused == []
    finally:
        if conn is not None:
            conn.close()
        relayd.stop()


@pytest.fixture
def small_tmpfs(workdir: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of our own."""
    with tmpfs(workdir / "full", "8m") as mount:
        yield mount


# fsync "never": the small bodies are appended from the exchange's callbacks (Sink.relay_now)
@pytest.mark.parametrize("fsync", ["always", "never"])
def test_a_full_file_system_is_a_5xx_and_the_sink_recovers(workdir: Path, small_tmpfs: Path, fsync: str) -> None:
    data = small_tmpfs
    filler = data / "filler"
    filler.write_bytes(b"f" * (5 * MiB))  # room left: under 3 MiB
    acked = Acked()
    relayd = Relayd(workdir, config(workdir, data, fsync=fsync))
    try:
        for n in range(200):  # large and small bodies until both kinds are refused
            acked.note(post(relayd.tcp, "/blobs/x", b"<%d>" % n * (MiB // 4 + n)), blob=b"<%d>" % n * (MiB // 4 + n))
            event = f"e-{n}"
            acked.note(post(relayd.tcp, "/events/x", orjson.dumps({"id": event, "pad": "p" * 5000}) + b"\n"), event)
            if len(acked.refused) >= 6:
                break
        assert acked.refused and set(acked.refused) == {507}  # never a 2xx for what was not stored
        assert acked.blobs and acked.events
        check(data, acked)
        assert sorted(os.listdir(data)) == ["blobs.raw", "events.ndjson", "filler"]
        filler.unlink()  # space comes back
        refused = len(acked.refused)
        blob = b"<again>" * (MiB // 4)
        acked.note(post(relayd.tcp, "/blobs/x", blob), blob=blob)
        acked.note(post(relayd.tcp, "/events/x", b'{"id":"again"}\n'), "again")
        assert len(acked.refused) == refused and acked.events[-1] == "again" and acked.blobs[-1][1] == blob
        check(data, acked)
    finally:
        relayd.stop()
