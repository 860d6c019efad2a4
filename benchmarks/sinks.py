"""Delivery into relay's sinks, beside lighttpd writing uploads to a file, in one invocation.

relayd (TCP, keep-alive, pinned to the CPU under test) takes 64 MiB POSTs into a file sink
(fsync "never" and "always") and a redis-stream sink (one entry per body), and 1 KiB NDJSON
records one per request into a file, a redis-stream sink (one entry per record) and a
nats-jetstream sink (one message per request, file storage, acknowledged before the
answer). The baseline is lighttpd's mod_webdav storing the same PUTs in a file on the same
disk. redis-server, nats-server and wrk run on the other CPU. Figures are medians of ``--repeat`` runs.

    python -m benchmarks.sinks [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.loadgen import Load, WrkResult, run_wrk
from benchmarks.procs import Cores, Proc

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
BIG = Load("upload.lua", (str(64 * MiB),), threads=1, connections=1)
RECORDS = Load("record.lua", ("1024",), threads=2, connections=16)


class Bench:
    def __init__(self, workdir: Path, cores: Cores) -> None:
        self.workdir = workdir
        self.cores = cores
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], port: int, cpus: tuple[int, ...] | None) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}.log", cpus=cpus, cwd=ROOT,
                    env=dict(os.environ) | {"PYTHONPATH": str(ROOT)})
        self.procs.append(proc)
        proc.wait_ready([("127.0.0.1", port)])
        return proc

    def stop(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lighttpd_dav(bench: Bench) -> str:
    port = _free_port()
    root = bench.workdir / "dav"
    (root / "in").mkdir(parents=True, exist_ok=True)
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
    bench.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)], port, bench.cores.sut)
    return f"http://127.0.0.1:{port}/in/upload"


def relayd(bench: Bench) -> str:
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
    bench.start("relayd", [sys.executable, "-m", "relay", "-c", str(config)], port, bench.cores.sut)
    return f"http://127.0.0.1:{port}"


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
            dav = lighttpd_dav(bench)
            relay = relayd(bench)
            cases = [
                ("64 MiB PUT: lighttpd mod_webdav → file", dav, Load("upload.lua", (*BIG.args, "PUT"), 1, 1), True),
                ("64 MiB POST: relayd → file (fsync never)", relay + "/file-never/x", BIG, True),
                ("64 MiB POST: relayd → file (fsync always)", relay + "/file-always/x", BIG, True),
                ("64 MiB POST: relayd → redis stream", relay + "/redis-body/x", BIG, True),
                ("1 KiB record PUT: lighttpd mod_webdav → file", dav, Load("record.lua", ("1024", "PUT"), 2, 16),
                 False),
                ("1 KiB NDJSON record: relayd → file", relay + "/file-records/x", RECORDS, False),
                ("1 KiB NDJSON record: relayd → redis stream", relay + "/redis-records/x", RECORDS, False),
                ("1 KiB NDJSON record: relayd → NATS JetStream", relay + "/nats-records/x", RECORDS, False),
            ]
            print(f"{'case':<46} {'MB/s':>8} {'req/s':>9} {'p99 ms':>8} {'errors':>7}")
            for label, url, load, big in cases:
                runs = [run_wrk(url, load, args.seconds, cores.load) for _ in range(args.repeat)]
                rate = _median(runs, lambda r: r.rate)
                mb_s = rate * 64 * MiB / 1e6 if big else rate * 1024 / 1e6
                print(f"{label:<46} {mb_s:>8.0f} {rate:>9,.1f} {_median(runs, lambda r: r.p99_us) / 1000:>8.1f} "
                      f"{sum(r.error_count for r in runs):>7}", flush=True)
        finally:
            bench.stop()


if __name__ == "__main__":
    main()
