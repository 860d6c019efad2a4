"""Child processes of a benchmark run: started pinned, read from /proc, stopped by PID.

Pinning (``taskset -c``): on a machine with at least two usable CPUs the systems under
test share the last one and the load side (wrk and the upstreams) gets the others, so
the proxy's CPU is never taken by the load generator. With a single CPU nothing is
pinned and the report says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

#: a TCP (host, port) pair or a Unix socket path
Address = tuple[str, int] | str


@dataclass(frozen=True)
class Cores:
    """Which CPUs the systems under test and the load side run on (None: unpinned)."""

    sut: tuple[int, ...] | None
    load: tuple[int, ...] | None

    @classmethod
    def detect(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls((cpus[-1],), tuple(cpus[:-1]))

    def describe(self) -> str:
        if self.sut is None or self.load is None:
            return "not pinned (a single usable CPU)"
        return (f"systems under test on CPU {_cpu_list(self.sut)}, "
                f"wrk and the upstreams on CPU {_cpu_list(self.load)} (taskset -c)")


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def pinned(argv: Sequence[str], cpus: tuple[int, ...] | None) -> list[str]:
    """``argv`` run through ``taskset -c`` (which execs it: the PID stays the same)."""
    return ["taskset", "-c", _cpu_list(cpus), *argv] if cpus else list(argv)


def can_connect(address: Address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


class Proc:
    """A started child, its output in ``log_path``, in its own session so that a
    Ctrl-C reaches only the runner, which then stops it by PID."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 cpus: tuple[int, ...] | None, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(pinned(argv, cpus), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, addresses: Sequence[Address], timeout: float = 20.0) -> None:
        """Return once every address accepts; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not all(can_connect(address) for address in addresses):
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not accepting on {list(addresses)} "
                                   f"after {timeout:g} s: {self.log_tail()}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            # the command name may hold spaces: count fields after its closing ")"
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process ever had, in bytes."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmHWM for {self.name}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
