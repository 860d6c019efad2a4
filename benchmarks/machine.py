"""The machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

from benchmarks.systems import ROOT

LIBRARIES = ("uvloop", "httptools", "orjson", "PyJWT", "cryptography", "aiohttp", "matplotlib")


def _output(argv: list[str]) -> str:
    """The first line a command prints, or "" when it cannot be run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _relay_revision() -> str:
    commit = _output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    # only what is measured counts: the daemon and its shipped configuration
    dirty = _output(["git", "status", "--porcelain", "--", "relay", "conf"])
    return commit + (" with uncommitted changes" if dirty else "")


def describe() -> dict[str, str]:
    versions = {name: _version(name) for name in LIBRARIES}
    fast_path = _output([sys.executable, "-c",
                         "from relay import fastpath; print('compiled' if fastpath.COMPILED "
                         "else 'pure Python')"])
    return {
        "nproc": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "relay": f"{_relay_revision()}, fast path {fast_path or 'unknown'}",
        "lighttpd": _output(["lighttpd", "-v"]).partition(" - ")[0],
        "haproxy": " ".join(_output(["haproxy", "-v"]).split()[:3]),
        "wrk": _output(["wrk", "-v"]).partition(" [")[0],
        "libraries": ", ".join(f"{name} {version}" for name, version in versions.items()),
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
