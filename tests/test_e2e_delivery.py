"""Delivery end to end: real relayd, lighttpd, recording upstream and redis-server.

What a 2xx promises (every sink of the flow has the data, byte-exact), what a retry with
an Idempotency-Key does (nothing is added twice; the first receipt comes back), what a
failing sink does (5xx naming it within its timeout, never a hang), that a slow sink
pushes back on the client with relayd's memory bounded, that a sink at ``max_in_flight``
refuses at once, and that nothing acknowledged is lost while Redis, the upstream and
relayd are killed and restarted.

Semantics of a failing tee: the exchange finishes every sink of a flow at once, so when
the redis tee fails, the file sink may already have appended the body. The client gets
503 naming the failed sink and, like any 5xx, must retry; with the same Idempotency-Key the
retry is not appended to the file again (the file replays its first receipt) and is added
to the stream. Without a key the file holds the body twice: delivery is at least once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import (Address, Lighttpd, RawConnection, Relayd, Response, Service, Upstream, exchange, free_port,
                     poll_until, request_bytes)
from support.redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REDIS_TIMEOUT = 1.0  # the redis sinks' timeout


def relay_config(workdir: Path, port: int, redis_url: str, upstream_url: str) -> str:
    data = workdir / "data"
    return f"""\
[server]
listen = ["127.0.0.1:{port}", "unix:{workdir / 'relay.sock'}"]
shutdown_grace = "2s"

[audit]
path = "{workdir / 'audit.jsonl'}"

[sink.archive]
type = "file"
path = "{data / 'archive.ndjson'}"
fsync = "never"

[sink.events]
type = "redis-stream"
url = "{redis_url}"
stream = "events"
timeout = "{REDIS_TIMEOUT:g}s"

[sink.up]
type = "http"
url = "{upstream_url}"
timeout = "5s"

[sink.bulk]
type = "file"
path = "{data / 'bulk.raw'}"
format = "raw"
fsync = "never"

[sink.held]
type = "file"
path = "{data / 'held.ndjson'}"
max_in_flight = 2

[sink.journal]
type = "file"
path = "{data / 'journal.ndjson'}"
fsync = "always"

[sink.conserved]
type = "redis-stream"
url = "{redis_url}"
stream = "conserved"
timeout = "{REDIS_TIMEOUT:g}s"

[[flow]]
name = "ingest"
path = "/ingest/"
methods = ["POST"]
auth = "none"
sink = "archive"
tee = ["events"]

[[flow]]
name = "relayed"
path = "/relayed/"
methods = ["POST"]
auth = "none"
sink = "up"
max_body = "1GiB"

[[flow]]
name = "bulk"
path = "/bulk/"
methods = ["POST"]
auth = "none"
sink = "bulk"
max_body = "2GiB"

[[flow]]
name = "held"
path = "/held/"
methods = ["POST"]
auth = "none"
sink = "held"

[[flow]]
name = "conserve"
path = "/conserve/"
methods = ["POST"]
auth = "none"
sink = "up"
tee = ["journal", "conserved"]
"""


class Delivery:
    """redis-server (fsynced append-only file), the upstream, relayd, lighttpd in front."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.redis = RedisServer(workdir, appendonly=True)
        self.upstream = Upstream(workdir)
        self.config = relay_config(workdir, free_port(), self.redis.url, self.upstream.url)
        self.relayd = Relayd(workdir, self.config)
        self.lighttpd = Lighttpd(workdir, self.relayd.unix)
        self.restarts = 0

    def restart_relayd(self) -> None:
        """SIGKILL relayd and start a new one on the same sockets (requests in flight are cut)."""
        self.relayd.service.send_signal(signal.SIGKILL)
        self.relayd.service.wait_exit(10)
        self.relayd.stop()
        self.restarts += 1
        self.relayd = Relayd(self.workdir, self.config, name=f"relayd-{self.restarts}")

    def restart_upstream(self) -> None:
        """Stop the upstream and start it again on the same port, logging to the same file."""
        old = self.upstream.service
        old.stop()
        argv = old.proc.args
        assert isinstance(argv, list)
        self.upstream.service = Service(old.name, argv, old.log_path)
        self.upstream.service.wait_ready([self.upstream.address])

    def close(self) -> None:
        for name in ("lighttpd", "relayd", "upstream", "redis"):
            if hasattr(self, name):
                getattr(self, name).stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    running = Delivery(tmp_path_factory.mktemp("delivery"))
    yield running
    running.close()


def post(address: Address, target: str, body: bytes, headers: list[tuple[str, str]] | None = None,
         timeout: float = 10.0) -> Response:
    return exchange(address, request_bytes("POST", target, [*(headers or []), ("Connection", "close")], body),
                    timeout=timeout)


def records(count: int, tag: str) -> list[bytes]:
    """NDJSON records, unique per call, with non-ASCII text and varied lengths."""
    rng = random.Random(tag)
    return [json.dumps({"id": f"{tag}-{n}", "text": "grüße ☃ " * rng.randrange(0, 20), "n": n},
                       ensure_ascii=False).encode() for n in range(count)]


def stream_datas(stack: Delivery, stream: str, first: str = "-", last: str = "+") -> list[bytes]:
    with stack.redis.client() as client:
        return [fields[b"data"] for _, fields in client.xrange(stream, first, last)]


def file_bytes(stack: Delivery, name: str) -> bytes:
    path = stack.data / name
    return path.read_bytes() if path.exists() else b""


def audit_record(stack: Delivery, field: str, value: str) -> dict[str, Any]:
    """relayd's audit record whose ``field`` is ``value`` (the audit log is flushed within 0.2 s)."""

    def find() -> dict[str, Any] | None:
        path = stack.workdir / "audit.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
            record: dict[str, Any] = json.loads(line)
            if record.get(field) == value:
                return record
        return None

    return poll_until(find, 5, f"the audit record with {field} {value}")


# --- what a 2xx means -------------------------------------------------------------------


def test_ndjson_lands_byte_exact_in_the_file_and_the_stream(stack: Delivery) -> None:
    lines = records(50, "main")
    body = b"\n".join(lines) + b"\n"
    response = post(stack.lighttpd.address, "/ingest/batch", body)
    assert response.status == 200, str(response)
    receipt = response.json()
    assert receipt["records"] == 50 and receipt["bytes"] == len(body)
    archive, events = receipt["sinks"]["archive"], receipt["sinks"]["events"]
    assert archive["file"] == "archive.ndjson"
    assert file_bytes(stack, "archive.ndjson")[archive["offset"]:archive["offset"] + len(body)] == body
    assert events["stream"] == "events" and events["records"] == 50
    assert stream_datas(stack, "events", *events["ids"]) == lines


def test_a_retry_with_the_same_idempotency_key_is_not_added_again(stack: Delivery) -> None:
    body = b"\n".join(records(3, "retry")) + b"\n"
    key = [("Idempotency-Key", f"retry-{uuid.uuid4()}")]
    first = post(stack.lighttpd.address, "/ingest/once", body, key)
    assert first.status == 200, str(first)
    size, length = len(file_bytes(stack, "archive.ndjson")), len(stream_datas(stack, "events"))
    again = post(stack.lighttpd.address, "/ingest/once", body, key)
    assert again.status == 200, str(again)
    assert again.json()["sinks"] == first.json()["sinks"]
    assert again.get("X-Relay-Request-Id") != first.get("X-Relay-Request-Id")
    assert (len(file_bytes(stack, "archive.ndjson")), len(stream_datas(stack, "events"))) == (size, length)


def test_the_idempotency_key_reaches_an_http_upstream(stack: Delivery) -> None:
    key = f"http-{uuid.uuid4()}"
    mark = stack.upstream.mark()
    response = post(stack.lighttpd.address, "/relayed/key", b"{}", [("Idempotency-Key", key)])
    assert response.status == 200, str(response)
    seen = stack.upstream.wait_for(lambda r: r["target"] == "/relayed/key", mark)
    assert ["Idempotency-Key", key] in seen["headers"]


# --- failing sinks ------------------------------------------------------------------------


def test_a_stopped_redis_is_503_within_its_timeout_and_the_keyed_retry_completes(stack: Delivery) -> None:
    lines = records(4, "stopped")
    body = b"\n".join(lines) + b"\n"
    key = [("Idempotency-Key", f"stopped-{uuid.uuid4()}")]
    before = len(file_bytes(stack, "archive.ndjson"))
    stack.redis.pause()
    try:
        started = time.monotonic()
        failed = post(stack.lighttpd.address, "/ingest/stopped", body, key)
        took = time.monotonic() - started
    finally:
        stack.redis.resume()
    assert failed.status == 503, str(failed)
    assert took < REDIS_TIMEOUT + 1.0
    assert failed.get("Retry-After") == "1"
    assert failed.json()["sink"] == "events"
    assert audit_record(stack, "request_id", failed.json()["request_id"])["failed_sink"] == "events"
    # the file sink finished alongside the tee and kept the body (see the module docstring)
    appended = file_bytes(stack, "archive.ndjson")[before:]
    assert appended == body
    retried = post(stack.lighttpd.address, "/ingest/stopped", body, key)
    assert retried.status == 200, str(retried)
    assert retried.json()["sinks"]["archive"]["offset"] == before  # replayed, not appended again
    assert file_bytes(stack, "archive.ndjson")[before:] == body
    assert stream_datas(stack, "events", *retried.json()["sinks"]["events"]["ids"]) == lines
    assert stream_datas(stack, "events").count(lines[0]) == 1


def test_a_killed_redis_is_503_at_once_and_is_used_again_once_restarted(stack: Delivery) -> None:
    body = b"\n".join(records(2, "killed")) + b"\n"
    stack.redis.kill()
    try:
        started = time.monotonic()
        failed = post(stack.relayd.unix, "/ingest/killed", body)
        assert time.monotonic() - started < REDIS_TIMEOUT
        assert failed.status == 503 and failed.json()["sink"] == "events", str(failed)
    finally:
        stack.redis.restart()
    response = post(stack.relayd.unix, "/ingest/killed", body)
    assert response.status == 200, str(response)


def test_a_sink_at_max_in_flight_answers_503_at_once(stack: Delivery) -> None:
    address = stack.relayd.tcp
    held = [RawConnection(address) for _ in range(2)]
    try:
        for conn in held:  # two requests whose bodies have not arrived hold both of the sink's slots
            conn.send(b"POST /held/a HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 9\r\n\r\n{}\n")

        def refused() -> Response | None:
            response = post(address, "/held/b", b"{}\n")
            return response if response.status == 503 else None

        response = poll_until(refused, 5, "the held sink to refuse")
        assert response.get("Retry-After") == "1" and response.json()["sink"] == "held"
        assert post(address, "/ingest/meanwhile", b"{}\n").status == 200  # other flows carry on
        for conn in held:
            conn.send(b"[1,2]\n")
            assert conn.read_response().status == 200
    finally:
        for conn in held:
            conn.close()
    assert post(address, "/held/c", b"{}\n").status == 200


# --- back-pressure and memory -------------------------------------------------------------


class PeakRss:
    """The largest resident set size of a process, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/status"
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            with open(self._path, encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * KiB)

    def stop(self) -> int:
        self._done.set()
        self._thread.join(5)
        return self.peak


def counted(size: int, piece: int, sent: list[int], digest: Any = None) -> Iterator[bytes]:
    """``size`` generated bytes in pieces of ``piece``; ``sent[0]`` counts what was handed out."""
    block = random.Random(size).randbytes(piece)
    for n in range(size // piece):
        data = n.to_bytes(8, "big") + block[8:]
        if digest is not None:
            digest.update(data)
        sent[0] += len(data)
        yield data


def test_a_slow_upstream_pauses_the_client_and_memory_stays_bounded(stack: Delivery) -> None:
    size, sent = 256 * MiB, [0]
    target = f"/relayed/slow-{uuid.uuid4().hex[:8]}?read_delay=0.05"  # about 1.3 MB/s
    mark = stack.upstream.mark()
    rss = PeakRss(stack.relayd.service.pid)
    with RawConnection(stack.relayd.tcp, timeout=30) as conn:
        conn.send(f"POST {target} HTTP/1.1\r\nHost: relay.test\r\nContent-Length: {size}\r\n\r\n".encode())
        conn.send_in_background(counted(size, 256 * KiB, sent))
        stack.upstream.wait_for(lambda r: r["target"] == target, mark)
        # with back-pressure the client gets socket buffers' worth past what the upstream read
        with pytest.raises(AssertionError, match="timed out"):
            poll_until(lambda: sent[0] >= 64 * MiB, 3, "the client to get 64 MiB out")
        assert sent[0] >= MiB  # paused, not stuck: the body did flow
    peak = rss.stop()
    assert peak < 100 * MiB, f"relayd grew to {peak / MiB:.0f} MiB"


def test_a_1_gib_body_streams_into_a_file_sink_in_bounded_memory(stack: Delivery) -> None:
    size, sent, digest = GiB, [0], hashlib.sha256()
    rss = PeakRss(stack.relayd.service.pid)
    with RawConnection(stack.relayd.tcp, timeout=120) as conn:
        conn.send(f"POST /bulk/big HTTP/1.1\r\nHost: relay.test\r\nContent-Length: {size}\r\n\r\n".encode())
        conn.send_in_background(counted(size, MiB, sent, digest))
        response = conn.read_response()
        conn.wait_sent()
    peak = rss.stop()
    assert response.status == 200, str(response)
    assert response.json()["sinks"]["bulk"] == {"file": "bulk.raw", "offset": 0}
    assert peak < 100 * MiB, f"relayd grew to {peak / MiB:.0f} MiB"
    stored = hashlib.sha256()
    with open(stack.data / "bulk.raw", "rb") as file:
        while chunk := file.read(4 * MiB):
            stored.update(chunk)
    assert stored.hexdigest() == digest.hexdigest()
    os.unlink(stack.data / "bulk.raw")


# --- conservation -------------------------------------------------------------------------


class Disruptor:
    """Runs ``steps`` in a thread, each once ``progress[0]`` reaches its threshold."""

    def __init__(self, steps: list[tuple[int, Callable[[], object]]], progress: list[int]) -> None:
        self._steps = steps
        self._progress = progress
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for threshold, step in self._steps:
                poll_until(lambda: self._progress[0] >= threshold, 60, f"attempt {threshold}")  # noqa: B023
                step()
        except BaseException as exc:  # raised again by join(), in the test's thread
            self.error = exc

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the disruptions did not finish"
        if self.error is not None:
            raise self.error


def upstream_bodies(stack: Delivery) -> set[str]:
    """sha256 of every body the upstream (in all its lives) read completely."""
    done = set()
    with open(stack.upstream.log_path, encoding="utf-8") as log:
        for line in log:
            record = json.loads(line)
            if record["phase"] == "done" and record["complete"]:
                done.add(record["sha256"])
    return done


def test_nothing_acknowledged_is_lost_while_redis_the_upstream_and_relayd_restart(stack: Delivery) -> None:
    """Records with unique ids, one per request and each retried (with its id as the
    Idempotency-Key) until acknowledged, while redis-server is SIGKILLed and restarted
    (append-only file, fsync always), the upstream stopped and restarted, and relayd
    SIGKILLed and restarted. Every record is then in all three sinks, byte-exact; in the
    stream exactly once (its key is kept in Redis), in the file and at the upstream at
    least once (a file remembers keys in memory only, an upstream sees every retry)."""
    address = stack.lighttpd.address
    attempts = [0]

    def send(record: bytes) -> bool:
        attempts[0] += 1
        key = json.loads(record)["id"]
        try:
            response = post(address, "/conserve/r", record + b"\n", [("Idempotency-Key", key)], timeout=15)
        except (OSError, AssertionError):
            return False  # the connection failed (relayd killed mid-request)
        return 200 <= response.status < 300

    disruptor = Disruptor([
        (40, stack.redis.kill), (60, stack.redis.restart),
        (110, stack.upstream.service.stop), (130, stack.restart_upstream),
        (180, stack.restart_relayd),
    ], attempts)
    sent = records(300, "conserve")
    for record in sent:
        # a client retrying after each 5xx, every 20 ms
        poll_until(lambda: send(record), 30, "the record to be acknowledged")  # noqa: B023
    disruptor.join()
    fresh = records(1, "fresh")[0]
    assert send(fresh), "a fresh record after the restarts failed"
    sent.append(fresh)

    assert attempts[0] > len(sent) + 40, "the disruptions failed too few requests to matter"
    journal = file_bytes(stack, "journal.ndjson")
    in_stream = stream_datas(stack, "conserved")
    at_upstream = upstream_bodies(stack)
    assert [r for r in sent if r + b"\n" not in journal] == []
    assert [r for r in sent if hashlib.sha256(r + b"\n").hexdigest() not in at_upstream] == []
    assert sorted(in_stream) == sorted(sent)
