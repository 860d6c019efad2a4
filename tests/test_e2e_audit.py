"""The audit log under faults, against real relayd processes.

kill -9 right after acknowledged requests (sequential, pipelined, a streamed answer,
several workers) and amid a load, one relayd or two workers: every request_id a client got a 2xx for is in the log. A torn last line
is cut at the next start and the chain verifies, naming the repair. A full disk (a small
tmpfs under the log; needs root, skipped otherwise): no 2xx without a record, nothing
reaches the upstream without a record, and relayd (each worker, with two) recovers by
itself once space returns;
``relayctl audit verify`` passes after every one of these crashes.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import ConnectionClosed, RawConnection, Relayd, Upstream, exchange, poll_until, relay_config, request_bytes
from support.procs import ROOT, child_env
from support.rawhttp import connect


def records(path: Path) -> list[dict[str, Any]]:
    """The whole lines of an audit file (a torn last line is left out)."""
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def logged_ids(*paths: Path) -> set[str]:
    return {r["request_id"] for path in paths for r in records(path) if "request_id" in r}


def audit_verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.ctl", "audit", "verify", *map(str, paths)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())


def kill_9(relayd: Relayd) -> None:
    relayd.service.proc.send_signal(signal.SIGKILL)
    relayd.service.wait_exit(10)
    relayd.stop()  # forgets it


def kill_9_and_verify(relayd: Relayd, log: Path) -> None:
    """kill -9 relayd; its audit log must verify all the same."""
    kill_9(relayd)
    checked = audit_verify(log)
    assert checked.returncode == 0, checked.stderr


def acknowledged_id(response_status: int, request_id: str | None) -> str:
    assert response_status == 200 and request_id
    return request_id


def test_acknowledged_requests_are_in_the_log_after_kill_9(workdir: Path, upstream: Upstream) -> None:
    log = workdir / "audit.jsonl"
    relayd = Relayd(workdir, relay_config(workdir, upstream.url))
    acked: list[str] = []
    with RawConnection(relayd.tcp) as conn:  # one after the other on a keep-alive connection
        for n in range(30):
            conn.send(request_bytes("POST", f"/data/acked-{n}", body=b"x" * 100))
            response = conn.read_response()
            acked.append(acknowledged_id(response.status, response.get("X-Relay-Request-Id")))
    with RawConnection(relayd.unix) as conn:  # pipelined: answered in a few loop turns
        conn.send(b"".join(request_bytes("GET", f"/data/piped-{n}") for n in range(30)))
        for _ in range(30):
            response = conn.read_response()
            acked.append(acknowledged_id(response.status, response.get("X-Relay-Request-Id")))
    kill_9_and_verify(relayd, log)
    assert set(acked) <= logged_ids(log)


def test_a_streamed_answer_is_recorded_before_its_head_goes(workdir: Path, upstream: Upstream) -> None:
    log = workdir / "audit.jsonl"
    relayd = Relayd(workdir, relay_config(workdir, upstream.url))
    with connect(relayd.tcp) as sock:
        sock.sendall(request_bytes("GET", "/data/streamed?body=8000000&te=chunked"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, "relayd closed before the head"
            head += chunk
        kill_9(relayd)  # the body is still on its way
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK" and "Transfer-Encoding: chunked" in lines
    request_id = next(v for k, _, v in (line.partition(": ") for line in lines) if k == "X-Relay-Request-Id")
    record = next(r for r in records(log) if r.get("request_id") == request_id)
    assert (record["status"], record["streamed"], record["bytes_out"]) == (200, True, None)
    checked = audit_verify(log)
    assert checked.returncode == 0, checked.stderr


def test_a_torn_tail_is_cut_at_start_and_the_repair_verifies(workdir: Path, upstream: Upstream) -> None:
    log = workdir / "audit.jsonl"
    config = relay_config(workdir, upstream.url)
    relayd = Relayd(workdir, config)
    acked = [exchange(relayd.tcp, request_bytes("GET", f"/data/before-{n}")).get("X-Relay-Request-Id")
             for n in range(5)]
    kill_9(relayd)
    torn = b'{"ts":1764000000.123,"request_id":"cut-sh'  # a write cut short by the crash
    with open(log, "ab") as f:
        f.write(torn)
    broken = audit_verify(log)
    assert broken.returncode == 1 and "truncated" in broken.stderr

    relayd = Relayd(workdir, config)
    after = exchange(relayd.tcp, request_bytes("GET", "/data/after")).get("X-Relay-Request-Id")
    kill_9(relayd)
    checked = audit_verify(log)
    assert checked.returncode == 0, checked.stderr
    assert "repaired:" in checked.stdout and f"kept in {log}.torn" in checked.stdout
    assert (workdir / "audit.jsonl.torn").read_bytes() == torn + b"\n"
    assert {*acked, after} <= logged_ids(log)
    repairs = [r for r in records(log) if r.get("reason") == "audit_repaired"]
    assert len(repairs) == 1 and repairs[0]["removed"]["bytes"] == len(torn)


def test_workers_each_keep_their_records_through_kill_9(workdir: Path, upstream: Upstream) -> None:
    relayd = Relayd(workdir, relay_config(workdir, upstream.url).replace("[server]\n", "[server]\nworkers = 2\n", 1))
    try:
        acked = [acknowledged_id(r.status, r.get("X-Relay-Request-Id"))
                 for r in (exchange(relayd.unix, request_bytes("GET", f"/data/w-{n}")) for n in range(40))]
        pids = worker_pids(workdir)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        poll_until(lambda: len(now := worker_pids(workdir)) == 2 and not set(pids) & set(now) or None, 15,
                   "the workers to be restarted")
        files = [workdir / "audit.w1.jsonl", workdir / "audit.w2.jsonl"]
        assert set(acked) <= logged_ids(*files)
        for path in files:  # each worker's file is a chain of its own
            result = audit_verify(path)
            assert result.returncode == 0, result.stderr
    finally:
        relayd.stop()


#: what the fault tests send: POSTs with a body (their heads read by httptools), and bodiless
#: GETs whose heads and answers both come whole in one read (taken apart in one call when
#: the fast path is compiled, see relay.fastpath.whole_request and whole_answer)
TRAFFIC = ["post", "whole-get"]


def request_for(traffic: str, target: str, size: int) -> bytes:
    """A request of ``traffic``'s kind for ``target``: a POST of ``size`` bytes, or a GET of
    a ``size``-byte answer the upstream sends whole."""
    if traffic == "post":
        return request_bytes("POST", target, body=b"z" * size)
    return request_bytes("GET", f"{target}?whole=1&body={size}")


def load_until_killed(relayd: Relayd, kill: Callable[[], None], traffic: str) -> list[str]:
    """Four clients sending ``traffic`` while ``kill`` runs once 40 requests are acknowledged
    (the records of those in flight being written as it lands); the acknowledged ids."""
    acked: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            try:
                response = exchange(relayd.unix, request_for(traffic, f"/data/load-{n}-{i}", 200), 5)
            except (OSError, ConnectionClosed):
                continue  # cut off by the kill, or refused until the restart
            if response.status == 200:
                acked.append(acknowledged_id(response.status, response.get("X-Relay-Request-Id")))

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in clients:
        thread.start()
    try:
        poll_until(lambda: len(acked) >= 40 or None, 30, "40 acknowledged requests")
        kill()
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
    return acked


@pytest.mark.parametrize("traffic", TRAFFIC)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_kill_9_amid_a_load_loses_no_acknowledged_record(workdir: Path, upstream: Upstream, workers: int,
                                                           traffic: str) -> None:
    config = relay_config(workdir, upstream.url).replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    relayd = Relayd(workdir, config)
    try:
        if workers == 1:
            acked = load_until_killed(relayd, lambda: kill_9(relayd), traffic)
            relayd = Relayd(workdir, config, name="relayd-again")  # repairs a torn tail, if the kill left one
            files = [workdir / "audit.jsonl"]
        else:
            pids = worker_pids(workdir)
            acked = load_until_killed(relayd, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids], traffic)
            poll_until(lambda: len(now := worker_pids(workdir)) == 2 and not set(pids) & set(now) or None, 15,
                       "the workers to be restarted")
            files = [workdir / "audit.w1.jsonl", workdir / "audit.w2.jsonl"]
        after = [acknowledged_id(r.status, r.get("X-Relay-Request-Id"))
                 for r in (exchange(relayd.unix, request_bytes("GET", f"/data/after-{n}")) for n in range(10))]
    finally:
        relayd.stop()
    assert {*acked, *after} <= logged_ids(*files)
    for path in files:
        result = audit_verify(path)
        assert result.returncode == 0, result.stderr


def worker_pids(workdir: Path) -> list[int]:
    result = subprocess.run([sys.executable, "-m", "relay.ctl", "--socket", str(workdir / "admin.sock"), "--json",
                             "status"], capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())
    if result.returncode != 0:
        return []
    return [int(w["pid"]) for w in json.loads(result.stdout)["workers"] if w.get("pid")]


# --- a full disk -------------------------------------------------------------------------


@pytest.fixture
def small_fs(workdir: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs for the audit log, unmounted after the test."""
    mount = workdir / "auditfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture
def on_small_fs(workdir: Path, upstream: Upstream, small_fs: Path) -> Iterator[Callable[..., Relayd]]:
    """Starts relayd with its audit log on the small tmpfs and ``audit.on_failure`` as given;
    stops each one before the tmpfs goes."""
    started: list[Relayd] = []

    def start(on_failure: str, workers: int = 1) -> Relayd:
        config = relay_config(workdir, upstream.url).replace(
            f'[audit]\npath = "{workdir / "audit.jsonl"}"',
            f'[audit]\npath = "{small_fs / "audit.jsonl"}"\non_failure = "{on_failure}"')
        assert str(small_fs) in config
        config = config.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        started.append(Relayd(workdir, config))
        return started[-1]

    yield start
    for relayd in started:
        relayd.stop()


def get(relayd: Relayd, target: str, traffic: str = "post") -> tuple[int, str, str | None]:
    response = exchange(relayd.tcp, request_for(traffic, target, 64))
    return response.status, response.get("X-Relay-Request-Id") or "", response.get("Retry-After")


def upstream_paths(upstream: Upstream, mark: int) -> list[str]:
    """The paths of the requests the upstream saw since ``mark`` (the module's tests share
    it), without their query, which an audit record leaves out."""
    return [r["target"].partition("?")[0] for r in upstream.since(mark)]


def filled_under(on_small_fs: Callable[[str], Relayd], small_fs: Path, on_failure: str) -> tuple[Relayd, Path]:
    """relayd after a first request, and the filler that then took all space under its log."""
    relayd = on_small_fs(on_failure)
    assert get(relayd, "/data/first")[0] == 200
    return relayd, fill(small_fs)


def until_refused(relayd: Relayd, prefix: str, traffic: str = "post") -> list[tuple[int, str, str | None]]:
    """Requests until one is not a 200 (the log's last page may take a few more records)."""
    answers = []
    for n in range(200):
        answers.append(get(relayd, f"{prefix}{n}", traffic))
        if answers[-1][0] != 200:
            break
    return answers


@pytest.mark.parametrize("traffic", TRAFFIC)
def test_a_full_disk_refuses_until_space_returns(upstream: Upstream, small_fs: Path,
                                                 on_small_fs: Callable[[str], Relayd], traffic: str) -> None:
    log = small_fs / "audit.jsonl"
    mark = upstream.mark()
    relayd, filler = filled_under(on_small_fs, small_fs, "refuse")
    answers = until_refused(relayd, "/data/full-", traffic)
    refused = [(status, retry) for status, _, retry in answers if status != 200]
    assert refused == [(503, "1")]
    shed = [get(relayd, f"/data/shed-{n}", traffic) for n in range(20)]
    assert {(status, retry) for status, _, retry in shed} == {(503, "1")}

    filler.unlink()  # space is back: relay recovers by itself
    poll_until(lambda: get(relayd, "/data/recovered", traffic)[0] == 200 or None, 10, "relayd to relay again")
    answers.append(get(relayd, "/data/after", traffic))
    kill_9_and_verify(relayd, log)

    ok_ids = {rid for status, rid, _ in answers if status == 200}
    written = records(log)
    assert ok_ids <= logged_ids(log)  # no 2xx without its record
    by_path = {r.get("path"): r for r in written}
    reached = {path for path in upstream_paths(upstream, mark) if path.startswith(("/data/full-", "/data/shed-"))}
    assert reached and all(target in by_path for target in reached)  # nothing relayed without a record
    assert not any(target.startswith("/data/shed-") for target in reached)  # shed before the upstream
    withheld = [r for r in written if r.get("reason") == "audit_withheld"]
    assert len(withheld) == 1 and withheld[0]["status"] == 503  # the answer held when the write failed
    assert withheld[0]["request_id"] == next(rid for status, rid, _ in answers if status == 503)
    resumed = [r for r in written if r.get("reason") == "audit_resumed"]
    assert len(resumed) == 1 and resumed[0]["lost"] == 0


def test_continue_serves_on_a_full_disk_and_writes_the_records_later(small_fs: Path,
                                                                     on_small_fs: Callable[[str], Relayd]) -> None:
    log = small_fs / "audit.jsonl"
    relayd, filler = filled_under(on_small_fs, small_fs, "continue")
    answers = [get(relayd, f"/data/cont-{n}") for n in range(60)]
    assert {status for status, _, _ in answers} == {200}
    assert not {rid for _, rid, _ in answers} <= logged_ids(log)  # some wait for space
    filler.unlink()
    ids = {rid for _, rid, _ in answers}
    poll_until(lambda: ids <= logged_ids(log) or None, 10, "the waiting records to be written")
    kill_9_and_verify(relayd, log)


def test_a_restart_on_a_full_disk_serves_once_space_returns(small_fs: Path,
                                                          on_small_fs: Callable[[str], Relayd]) -> None:
    log = small_fs / "audit.jsonl"
    relayd, filler = filled_under(on_small_fs, small_fs, "refuse")
    assert until_refused(relayd, "/data/until-")[-1][0] == 503
    kill_9_and_verify(relayd, log)  # with records pending: nothing torn was left behind
    relayd = on_small_fs("refuse")
    filler.unlink()
    poll_until(lambda: get(relayd, "/data/back")[0] == 200 or None, 10, "relayd to relay again")
    kill_9_and_verify(relayd, log)


@pytest.mark.parametrize("traffic", TRAFFIC)
def test_a_full_disk_with_two_workers_refuses_through_both_and_both_recover(
        workdir: Path, upstream: Upstream, small_fs: Path, on_small_fs: Callable[..., Relayd], traffic: str) -> None:
    mark = upstream.mark()
    relayd = on_small_fs("refuse", workers=2)
    poll_until(lambda: len(worker_pids(workdir)) == 2 or None, 15, "two workers")
    answers = [get(relayd, f"/data/first-{n}", traffic) for n in range(10)]
    assert {status for status, _, _ in answers} == {200}
    filler = fill(small_fs)
    for n in range(400):  # until both workers refuse (each has its own file and its own outage)
        answers.append(get(relayd, f"/data/full-{n}", traffic))
        refusing = {rid.split("-")[0] for status, rid, _ in answers[10:] if status == 503}
        if len(refusing) == 2:
            break
    assert len(refusing) == 2, "both workers refuse once their log cannot be written"
    assert {(status, retry) for status, _, retry in answers if status != 200} == {(503, "1")}
    filler.unlink()
    poll_until(lambda: all(get(relayd, f"/data/back-{n}", traffic)[0] == 200 for n in range(10)) or None, 10,
               "both workers to relay again")
    answers += [get(relayd, f"/data/after-{n}", traffic) for n in range(10)]
    files = [small_fs / "audit.w1.jsonl", small_fs / "audit.w2.jsonl"]
    pids = worker_pids(workdir)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    poll_until(lambda: len(now := worker_pids(workdir)) == 2 and not set(pids) & set(now) or None, 15,
               "the workers to be restarted")
    assert {rid for status, rid, _ in answers if status == 200} <= logged_ids(*files)  # no 2xx without its record
    reached = {path for path in upstream_paths(upstream, mark) if path.startswith("/data/full-")}
    logged_paths = {r.get("path") for path in files for r in records(path)}
    assert reached <= logged_paths  # nothing relayed without its record
    for path in files:
        result = audit_verify(path)
        assert result.returncode == 0, result.stderr
