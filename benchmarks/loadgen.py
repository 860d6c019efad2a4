"""wrk runs: the command line, and the figures its Lua ``done`` hook prints.

Every script in ``benchmarks/wrk`` loads ``report.lua``, whose ``done`` prints one line,
``BENCH {json}``: completed requests, the run's duration, p50/p99 latency, and wrk's
error counts. ``status`` counts answers with a status of 400 or more (wrk's own test);
1xx/3xx answers would pass unnoticed, but nothing here sends them, and a probe request
before every run insists on a 2xx.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import pinned

SCRIPTS = Path(__file__).resolve().parent / "wrk"
#: a request unanswered for this long counts as a wrk timeout error
REQUEST_TIMEOUT = "10s"
#: time for wrk to start (tokens.lua formats 100,000 requests per thread first) and stop
SLACK = 90.0


@dataclass(frozen=True)
class Load:
    """How wrk drives a scenario: the script in ``benchmarks/wrk``, its arguments
    (after ``--``), threads and connections."""

    script: str
    args: tuple[str, ...] = ()
    threads: int = 2
    connections: int = 64


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_us: int
    p99_us: int
    errors: dict[str, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(url: str, load: Load, seconds: float, cpus: tuple[int, ...] | None) -> WrkResult:
    argv = pinned(["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{seconds:g}s",
                   "--timeout", REQUEST_TIMEOUT, "-s", str(SCRIPTS / load.script), url,
                   "--", *load.args], cpus)
    # run() kills wrk if we are interrupted or it overruns
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + SLACK)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            figures = json.loads(line[len("BENCH "):])
            return WrkResult(requests=figures["requests"], seconds=figures["duration_us"] / 1e6,
                             p50_us=figures["p50_us"], p99_us=figures["p99_us"],
                             errors=figures["errors"])
    raise RuntimeError(f"wrk exited with {done.returncode} without a report: "
                       f"{(done.stderr or done.stdout).strip()[-400:]}")
