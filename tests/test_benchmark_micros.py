"""The micro-benchmarks still run: each at its smallest setting prints its figures. They
import relay's internals, which move; without this a benchmark breaks unseen until someone
needs its figure. (Those needing the benchmarks' 100,000 minted tokens, callgrind or a
redis-server are left to their own runs.)"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support.procs import ROOT, child_env

MICROS = [
    ("micro_fastpath", "--repeat", "1"),
    ("micro_audit",),
    ("micro_heads", "--repeat", "1"),
    ("micro_whole", "--repeat", "1"),
    ("micro_signing", "--repeat", "1"),
    ("micro_grants", "--repeat", "1"),
    ("micro_ratelimit", "--repeat", "1", "--no-shared"),
]


@pytest.mark.parametrize("micro", MICROS, ids=lambda m: m[0])
def test_the_micro_benchmark_prints_its_figures(micro: tuple[str, ...]) -> None:
    name, *args = micro
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=child_env())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = [line for line in done.stdout.splitlines() if re.search(r"\d[\d,]*(\.\d+)?\s*(µs|ns|x|$)", line)]
    assert len(figures) >= 2, done.stdout
