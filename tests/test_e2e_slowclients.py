"""Slow clients cannot hold relayd: floods of clients that send their bodies a byte at a time,
or never read their answers, are cut off (408 / a dropped connection, with the reason in the
audit log) and give their sink slots back, so a normal client is served within the timeout
while they attack. Time relayd itself stops reading (a slow sink) is not held against anyone.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import RawConnection, Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.rawhttp import ConnectionClosed, Response

#: clients per flood: as many as the sinks have slots, so together they can hold every one
FLOOD = 256
WINDOW = 2.0          # body_rate_window
SEND_TIMEOUT = 2.0
REQUEST_TIMEOUT = 3.0
#: a normal client must be served within this of its first try: the timeout that frees the
#: slots (twice over for send_timeout, whose first look may still see the kernel take bytes),
#: a sweep tick, and room for a busy two-core machine (unbounded without the limits)
BOUND = 2 * max(WINDOW, SEND_TIMEOUT) + 3.0
#: the file sink flood's clients send one byte each this often: 4 bytes/s, under 100
TRICKLE = 0.25

FILE_FLOW = """
[sink.files]
type = "file"
path = "{path}"
format = "raw"
fsync = "never"
max_in_flight = {slots}

[[flow]]
name = "files"
path = "/files/"
methods = ["POST"]
auth = "none"
sink = "files"
max_body = "1MiB"
"""


def slow_config(workdir: Path, upstream: Upstream, limits: str) -> str:
    text = relay_config(workdir, upstream.url, extra=FILE_FLOW.format(path=workdir / "files.raw", slots=FLOOD))
    return text.replace("[server]\n", f"[server]\n{limits}\n", 1)


@pytest.fixture(scope="module")
def relayd(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Relayd]:
    """relayd with short slow-client limits; the HTTP sink `up` has 256 slots, as has `files`."""
    workdir = tmp_path_factory.mktemp("slow")
    limits = (f'min_body_rate = 100\nbody_rate_window = "{WINDOW:g}s"\n'
              f'request_timeout = "{REQUEST_TIMEOUT:g}s"\nsend_timeout = "{SEND_TIMEOUT:g}s"')
    running = Relayd(workdir, slow_config(workdir, upstream, limits))
    yield running
    running.stop()


def admin_status(relayd: Relayd) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(relayd.config_path.parent / "admin.sock"))
        sock.sendall(b'{"cmd": "status"}\n')
        line = b""
        while not line.endswith(b"\n"):
            piece = sock.recv(65536)
            assert piece, "the admin socket closed without answering"
            line += piece
    status: dict[str, Any] = json.loads(line)
    return status


def audit_records(relayd: Relayd) -> list[dict[str, Any]]:
    path = relayd.config_path.parent / "audit.jsonl"
    if not path.exists():
        return []
    # a line still being written (no newline yet) is read next time
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.endswith("\n")]


def audit_of(relayd: Relayd, path_prefix: str, reason: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(relayd) if r.get("path", "").startswith(path_prefix) and r["reason"] == reason]


def wait_for_audit(relayd: Relayd, path_prefix: str, reason: str, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        hits = audit_of(relayd, path_prefix, reason)
        return hits if len(hits) >= count else None
    return poll_until(found, 10, f"{count} audit records of {path_prefix} with reason {reason}")


def timed_until_served(send: Callable[[], Response], until: float) -> tuple[float, Response, int]:
    """Retry ``send`` while it is refused with 503 (sink full); the seconds it took to be
    served, the answer, and how many 503s came first."""
    started = time.monotonic()
    refused = 0
    while True:
        response = send()
        if response.status != 503 or time.monotonic() > until:
            return time.monotonic() - started, response, refused
        refused += 1
        time.sleep(0.05)


def normal_client_during(flood_over: Callable[[], bool], send: Callable[[], Response], start: float,
                         ) -> tuple[list[float], list[Response], int]:
    """A normal client, one request after another, while the flood lasts (at least one);
    the seconds each took to be served, the answers, and how many 503s they met."""
    latencies: list[float] = []
    answers: list[Response] = []
    refusals = 0
    give_up = start + 60.0  # a flood relayd never cuts must fail the test, not hang it
    while not latencies or not flood_over():
        assert time.monotonic() < give_up, "the flood was still holding relayd after 60 s"
        took, response, refused = timed_until_served(send, start + BOUND + 10.0)
        refusals += refused
        latencies.append(took)
        answers.append(response)
    return latencies, answers, refusals


def served_in_time(what: str, latencies: list[float], answers: list[Response], refused: int) -> None:
    """The normal client met the flood (a 503: every slot was held) and was served within BOUND."""
    print(f"{what}: {len(latencies)} normal requests, p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    assert refused > 0, "the flood never held all the sink's slots"
    assert [a.status for a in answers] == [200] * len(answers)
    assert max(latencies) < BOUND


def settled(relayd: Relayd) -> None:
    """Wait until an earlier test's clients are all gone from relayd."""
    poll_until(lambda: admin_status(relayd)["in_flight"] == 0 or None, 20, "relayd to finish earlier requests")


# --- floods ---------------------------------------------------------------------------------


class Trickler:
    """``FLOOD`` clients each sending its body a byte every TRICKLE seconds, one thread for all.

    Each keeps going until relayd answers (the answer is read and kept) or drops it.
    """

    def __init__(self, conns: list[RawConnection], limit: float) -> None:
        self.conns = conns
        self.answers: dict[int, Response | None] = {}
        self.done = threading.Event()
        self._limit = limit
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        active = dict(enumerate(self.conns))
        end = time.monotonic() + self._limit
        try:
            while active and time.monotonic() < end:
                readable, _, _ = select.select([c.sock for c in active.values()], [], [], TRICKLE)
                for n, conn in list(active.items()):
                    if conn.sock in readable:
                        try:
                            self.answers[n] = conn.read_response()
                        except (ConnectionClosed, OSError):
                            self.answers[n] = None
                        del active[n]
                for n, conn in list(active.items()):
                    try:
                        conn.sock.send(b"A")
                    except OSError:
                        self.answers[n] = None
                        del active[n]
        finally:
            self.done.set()

    def join(self) -> None:
        self._thread.join(self._limit + 10)


def test_slow_bodies_cannot_hold_the_file_sinks_slots(relayd: Relayd) -> None:
    file_path = relayd.config_path.parent / "files.raw"
    settled(relayd)
    conns = [RawConnection(relayd.tcp) for _ in range(FLOOD)]
    try:
        for n, conn in enumerate(conns):
            head = request_bytes("POST", f"/files/slow-{n}", [("Content-Length", "1000")])
            conn.send(head + b"A")
        started = time.monotonic()
        trickler = Trickler(conns, limit=WINDOW + 8.0)

        def normal() -> Response:
            return exchange(relayd.tcp, request_bytes("POST", "/files/normal", body=b"normal body\n"))

        latencies, answers, refused = normal_client_during(trickler.done.is_set, normal, started)
        trickler.join()
    finally:
        for conn in conns:
            conn.close()
    served_in_time("slow-body flood, file sink", latencies, answers, refused)
    # every slow client was answered 408, as soon as its first window was over
    statuses = Counter(a.status if a is not None else "dropped" for a in trickler.answers.values())
    assert statuses == {408: FLOOD}, statuses
    assert {a.json()["error"] for a in trickler.answers.values() if a is not None} == {"request_timeout"}
    records = wait_for_audit(relayd, "/files/slow-", "body_too_slow", FLOOD)
    assert {r["status"] for r in records} == {408}
    # the file sink kept nothing of them: the file holds the normal bodies only
    assert file_path.read_bytes() == b"normal body\n" * len(answers)


def non_reader(address: tuple[str, int]) -> socket.socket:
    """A client that will not read: a small receive window, and a small MSS so that relayd's
    kernel, which sizes its send buffer from the MSS (64 KiB on loopback), holds little
    either. What it costs relayd is then its own buffering, not megabytes of kernel copies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def test_clients_that_never_read_cannot_hold_the_http_sinks_slots(relayd: Relayd) -> None:
    answer_size = 64 * 1024 * 1024  # far more than any buffer on the way holds
    settled(relayd)
    socks = [non_reader(relayd.tcp) for _ in range(FLOOD)]
    try:
        for n, sock in enumerate(socks):
            sock.sendall(request_bytes("GET", f"/data/big-{n}?fill={answer_size}"))
        started = time.monotonic()

        def normal() -> Response:
            return exchange(relayd.tcp, request_bytes("GET", "/data/normal?body=1000"))

        def flood_over() -> bool:
            return len(audit_of(relayd, "/data/big-", "send_timeout")) >= FLOOD

        latencies, answers, refused = normal_client_during(flood_over, normal, started)
    finally:
        for sock in socks:
            sock.close()
    served_in_time("non-reading flood, HTTP sink", latencies, answers, refused)
    records = wait_for_audit(relayd, "/data/big-", "send_timeout", FLOOD)
    assert all(r["bytes_out"] < answer_size for r in records)


# --- one client at a time --------------------------------------------------------------------


def test_a_request_longer_than_request_timeout_gets_408(relayd: Relayd) -> None:
    """Fast enough for min_body_rate (800 bytes/s), but the whole request takes too long."""
    settled(relayd)
    with RawConnection(relayd.tcp) as conn:
        conn.send(request_bytes("POST", "/data/long", [("Content-Length", "100000")]))
        started = time.monotonic()
        while not conn.readable(0.25):
            conn.sock.send(b"B" * 200)
            assert time.monotonic() - started < REQUEST_TIMEOUT + 5, "relayd let the request run on"
        response = conn.read_response()
    assert response.status == 408 and response.json()["error"] == "request_timeout"
    assert REQUEST_TIMEOUT - 0.5 < time.monotonic() - started
    (record,) = wait_for_audit(relayd, "/data/long", "request_timeout", 1)
    assert record["request_id"] == response.json()["request_id"] and record["status"] == 408


def test_an_upload_paused_by_a_slow_sink_is_not_too_slow(tmp_path: Path, upstream: Upstream) -> None:
    """The upstream reads 64 KiB every 50 ms, so relayd keeps pausing the client: the body
    arrives at ~1.3 MB/s on the wall clock, under this relayd's min_body_rate of 4 MiB/s, and
    takes longer than its request_timeout; the client itself never keeps relayd waiting."""
    limits = 'min_body_rate = "4MiB"\nbody_rate_window = "1s"\nrequest_timeout = "3s"'
    strict = Relayd(tmp_path, slow_config(tmp_path, upstream, limits))
    try:
        body = b"u" * (8 * 1024 * 1024)
        started = time.monotonic()
        with RawConnection(strict.tcp, timeout=60) as conn:
            conn.send_in_background([request_bytes("POST", "/data/paused?read_delay=0.05",
                                                   [("Content-Length", str(len(body)))]), body])
            response = conn.read_response()
        took = time.monotonic() - started
    finally:
        strict.stop()
    assert response.status == 200, str(response)
    assert took > 3.0  # longer than request_timeout, and slower than min_body_rate, on the wall clock
