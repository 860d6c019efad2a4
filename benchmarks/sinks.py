"""Delivery into relay's sinks, beside lighttpd writing uploads to files, in one invocation.

relayd (TCP, keep-alive, pinned to the CPU under test) takes 64 MiB POSTs into a file sink
(fsync "never" and "always") and a redis-stream sink (one entry per body), and 1 KiB NDJSON
records one per request into a file, a redis-stream sink (one entry per record) and a
nats-jetstream sink (one message per request, file storage, acknowledged before the
answer). The baseline is lighttpd's mod_webdav storing the same PUTs on the same disk. For
the 64 MiB bodies it stores every PUT under a name of its own, keeping every body as the
file sink does: PUTs replacing one file would let the kernel reuse the replaced file's
pages for the next one and drop its dirty data unwritten, which an append never can (on
this machine that alone costs the writer 3-4 × the CPU of each write). wrk formats each
such request anew (≈ 13 ms of its CPU for 64 MiB), for relayd too. Every 64 MiB case
starts with nothing left to write back (``sync``) and lighttpd's earlier uploads removed.
redis-server, nats-server and wrk run on the other CPU. Figures are medians of
``--repeat`` runs; ``cpu µs/req`` is the CPU time (user + system, all threads) of the
process under test (lighttpd or relayd) over all runs of a case, per request.

    python -m benchmarks.sinks [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import Load, WrkResult, run_wrk
from benchmarks.procs import Cores, Proc

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
#: every body to a path of its own (see the module's docstring); relayd's flows match any
BIG = Load("upload.lua", (str(64 * MiB), "POST", "each"), threads=1, connections=1)
BIG_PUTS = Load("upload.lua", (str(64 * MiB), "PUT", "each"), threads=1, connections=1)
RECORDS = Load("record.lua", ("1024",), threads=2, connections=16)
RECORD_PUTS = Load("record.lua", ("1024", "PUT"), threads=2, connections=16)


@dataclass(frozen=True)
class Case:
    label: str
    url: str
    load: Load
    body_bytes: int
    #: the process under test, whose CPU time is reported
    sut: Proc


class Bench:
    def __init__(self, workdir: Path, cores: Cores) -> None:
        self.workdir = workdir
        self.cores = cores
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int, cpus: tuple[int, ...] | None, tree: Path = ROOT,
              timeout: float = 20.0) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}.log", cpus=cpus, cwd=tree,
                    env=dict(os.environ) | {"PYTHONPATH": str(tree)})
        self.procs.append(proc)
        proc.wait_ready([("127.0.0.1", port)], timeout)
        return proc

    def stop(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lighttpd_dav(bench: Bench) -> tuple[Proc, str]:
    port = _free_port()
    root = bench.workdir / "dav"
    _uploads(bench).mkdir(parents=True, exist_ok=True)
    conf = bench.workdir / "dav.conf"
    conf.write_text(f"""\
server.modules = ("mod_webdav")
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.upload-dirs = ("{root}")
server.max-request-size = 0
webdav.activate = "enable"
webdav.is-readonly = "disable"
""")
    proc = bench.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)], port, bench.cores.sut)
    return proc, f"http://127.0.0.1:{port}/in/upload"


def _uploads(bench: Bench) -> Path:
    return bench.workdir / "dav" / "in"


def _fresh_disk(bench: Bench) -> None:
    """Remove lighttpd's stored uploads and write back everything still dirty, so that a
    case neither inherits another's unwritten data nor gets memory it freed."""
    shutil.rmtree(_uploads(bench))
    _uploads(bench).mkdir()
    os.sync()


def relayd(bench: Bench, tree: Path = ROOT, prefix: Sequence[str] = (), timeout: float = 20.0) -> tuple[Proc, str]:
    """relayd from ``tree`` (run under ``prefix``, a profiler say) with the sinks above."""
    redis_port, nats_port, port = _free_port(), _free_port(), _free_port()
    bench.start("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js",
                         "-sd", str(bench.workdir / "nats")], nats_port, bench.cores.load)
    bench.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(bench.workdir)], redis_port, bench.cores.load)
    data = bench.workdir / "data"
    sinks = "".join(f"""
[sink.file_{fsync}]
type = "file"
path = "{data}/{fsync}.ndjson"
format = "{fmt}"
fsync = "{fsync}"
rotate = "1GiB"
""" for fsync, fmt in (("never", "raw"), ("always", "raw")))
    flows = "".join(f"""
[[flow]]
name = "{name}"
path = "/{name}/"
methods = ["POST"]
auth = "none"
sink = "{sink}"
max_body = "128MiB"
""" for name, sink in (("file-never", "file_never"), ("file-always", "file_always"), ("redis-body", "redis_body"),
                       ("file-records", "file_records"), ("redis-records", "redis_records"),
                       ("nats-records", "nats_records")))
    config = bench.workdir / "relay.toml"
    config.write_text(f"""\
[server]
listen = ["127.0.0.1:{port}"]
[audit]
path = "{bench.workdir / 'audit.jsonl'}"
chain = false
{sinks}
[sink.file_records]
type = "file"
path = "{data}/records.ndjson"
fsync = "never"
rotate = "1GiB"

[sink.redis_body]
type = "redis-stream"
url = "redis://127.0.0.1:{redis_port}/0"
stream = "bodies"
entry = "body"
maxlen = 4

[sink.redis_records]
type = "redis-stream"
url = "redis://127.0.0.1:{redis_port}/0"
stream = "records"
maxlen = 100000

[sink.nats_records]
type = "nats-jetstream"
url = "nats://127.0.0.1:{nats_port}"
stream = "RECORDS"
subject = "records"
{flows}""")
    proc = bench.start("relayd", [*prefix, sys.executable, "-m", "relay", "-c", str(config)], port, bench.cores.sut,
                       tree, timeout)
    return proc, f"http://127.0.0.1:{port}"


def _median(runs: list[WrkResult], figure: Callable[[WrkResult], float]) -> float:
    return statistics.median(figure(run) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cores = Cores.detect()
    with tempfile.TemporaryDirectory(prefix="relay-sinks-", dir=ROOT / "benchmarks") as scratch:
        bench = Bench(Path(scratch), cores)
        try:
            lighttpd, dav = lighttpd_dav(bench)
            relay_proc, relay = relayd(bench)
            big, record = 64 * MiB, 1024
            cases = [
                Case("64 MiB PUT: lighttpd mod_webdav → files", dav, BIG_PUTS, big, lighttpd),
                Case("64 MiB POST: relayd → file (fsync never)", relay + "/file-never/x", BIG, big, relay_proc),
                Case("64 MiB POST: relayd → file (fsync always)", relay + "/file-always/x", BIG, big, relay_proc),
                Case("64 MiB POST: relayd → redis stream", relay + "/redis-body/x", BIG, big, relay_proc),
                Case("1 KiB record PUT: lighttpd mod_webdav → file", dav, RECORD_PUTS, record, lighttpd),
                Case("1 KiB NDJSON record: relayd → file", relay + "/file-records/x", RECORDS, record, relay_proc),
                Case("1 KiB NDJSON record: relayd → redis stream", relay + "/redis-records/x", RECORDS, record,
                     relay_proc),
                Case("1 KiB NDJSON record: relayd → NATS JetStream", relay + "/nats-records/x", RECORDS, record,
                     relay_proc),
            ]
            print(f"{'case':<46} {'MB/s':>8} {'req/s':>9} {'p99 ms':>8} {'cpu µs/req':>11} {'errors':>7}")
            for case in cases:
                if case.body_bytes == big:
                    _fresh_disk(bench)
                cpu_before = case.sut.cpu_seconds()
                runs = [run_wrk(case.url, case.load, args.seconds, cores.load) for _ in range(args.repeat)]
                cpu_us = (case.sut.cpu_seconds() - cpu_before) * 1e6 / max(1, sum(run.requests for run in runs))
                rate = _median(runs, lambda r: r.rate)
                print(f"{case.label:<46} {rate * case.body_bytes / 1e6:>8.0f} {rate:>9,.1f} "
                      f"{_median(runs, lambda r: r.p99_us) / 1000:>8.1f} {cpu_us:>11,.0f} "
                      f"{sum(r.error_count for r in runs):>7}", flush=True)
        finally:
            bench.stop()


if __name__ == "__main__":
    main()
