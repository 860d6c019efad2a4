"""Child processes for end-to-end tests: relayd, lighttpd and the recording upstream.

Each is started in a test's own directory with free ports, polled until it accepts
connections, and stopped by the PID it was started with (SIGTERM, then SIGKILL after
a timeout). Every live process is listed in ``LIVE`` so a failing test's report can
show their logs (see conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .rawhttp import Address, can_connect

ROOT = Path(__file__).resolve().parents[2]
LIGHTTPD_CONF = ROOT / "conf" / "lighttpd.conf"
#: the other pairing: whole client connections handed to relayd (mod_sockproxy)
SOCKPROXY_CONF = ROOT / "conf" / "lighttpd-sockproxy.conf"
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream.py")

T = TypeVar("T")


def poll_until(condition: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Call ``condition`` until it returns something truthy, and return that;
    fail with ``what`` once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """A child process we started, with stdout and stderr captured to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, addresses: Sequence[Address], timeout: float = 15.0) -> None:
        """Wait until every address accepts a connection; fail early if the process dies."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} "
                                     f"before serving:\n{self.log_tail()}")
            return all(can_connect(address) for address in addresses)

        poll_until(ready, timeout, f"{self.name} to accept on {list(addresses)}")

    def send_signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit status; fails the test if the process is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) still running after "
                                 f"{timeout}s:\n{self.log_tail()}") from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit status."""
        if self in LIVE:
            LIVE.remove(self)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, limit: int = 8000) -> str:
        text = self.log_text()
        return text if len(text) <= limit else "...\n" + text[-limit:]


#: processes started and not yet stopped, newest last
LIVE: list[Service] = []


class Upstream:
    """The recording upstream (upstream.py) on a TCP port or a Unix socket."""

    def __init__(self, workdir: Path, name: str = "upstream", unix: bool = False) -> None:
        self.log_path = workdir / f"{name}.jsonl"
        self.log_path.touch()
        self.address: Address
        if unix:
            self.address = str(workdir / f"{name}.sock")
            where = ["--unix", self.address]
        else:
            self.address = ("127.0.0.1", free_port())
            where = ["--tcp", f"127.0.0.1:{self.address[1]}"]
        argv = [sys.executable, str(UPSTREAM_SCRIPT), "--log", str(self.log_path), *where]
        self.service = Service(name, argv, workdir / f"{name}.log")
        self.service.wait_ready([self.address])

    @property
    def url(self) -> str:
        assert isinstance(self.address, tuple)
        return f"http://{self.address[0]}:{self.address[1]}"

    def records(self) -> list[dict[str, Any]]:
        """Every request seen so far: the "head" line merged with its "done" line, if any."""
        merged: dict[int, dict[str, Any]] = {}
        with open(self.log_path, encoding="utf-8") as log:
            for line in log:
                if line.endswith("\n"):  # a line still being written is skipped
                    record = json.loads(line)
                    merged.setdefault(record["seq"], {}).update(record)
        return [merged[seq] for seq in sorted(merged)]

    def mark(self) -> int:
        """A position in the log; ``since`` returns what arrived after it."""
        return max((r["seq"] for r in self.records()), default=0)

    def since(self, mark: int) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["seq"] > mark]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], mark: int = 0,
                 timeout: float = 10.0, what: str = "a request") -> dict[str, Any]:
        """The first request after ``mark`` matching ``predicate``, waiting for it to arrive."""

        def find() -> dict[str, Any] | None:
            return next((r for r in self.since(mark) if predicate(r)), None)

        return poll_until(find, timeout, f"{what} at the upstream")

    def stop(self) -> None:
        self.service.stop()


def listen_addresses(config_text: str) -> list[Address]:
    """relayd's listen addresses from its config, in the form ``connect`` takes."""
    addresses: list[Address] = []
    for entry in tomllib.loads(config_text)["server"]["listen"]:
        if entry.startswith("unix:"):
            addresses.append(entry[len("unix:"):])
        else:
            host, _, port = entry.rpartition(":")
            addresses.append((host.strip("[]"), int(port)))
    return addresses


def child_env() -> dict[str, str]:
    """Our environment (RELAY_NO_EXTENSIONS and all) with the checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Relayd:
    """relayd serving ``config_text`` (written to ``workdir/relay.toml``); ``extra_env``
    overrides its environment (``RELAY_NO_EXTENSIONS``, say)."""

    def __init__(self, workdir: Path, config_text: str, name: str = "relayd",
                 wait: bool = True, extra_env: dict[str, str] | None = None) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text, encoding="utf-8")
        self.addresses = listen_addresses(config_text)
        argv = [sys.executable, "-m", "relay", "-c", str(self.config_path)]
        self.service = Service(name, argv, workdir / f"{name}.log", env=child_env() | (extra_env or {}))
        if wait:
            self.service.wait_ready(self.addresses)

    @property
    def tcp(self) -> tuple[str, int]:
        return next(a for a in self.addresses if isinstance(a, tuple))

    @property
    def unix(self) -> str:
        return next(a for a in self.addresses if isinstance(a, str))

    def stop(self) -> int:
        return self.service.stop()


def relay_check(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m relay check -c CONFIG``: validation only."""
    return subprocess.run([sys.executable, "-m", "relay", "check", "-c", str(config_path)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=child_env())


class Lighttpd:
    """lighttpd running a shipped configuration (conf/lighttpd.conf unless ``conf`` names
    another), in front of ``backend_socket``; ``extra_env`` sets more of its parameters."""

    def __init__(self, workdir: Path, backend_socket: str, conf: Path = LIGHTTPD_CONF,
                 extra_env: dict[str, str] | None = None) -> None:
        state = workdir / "lighttpd"
        (state / "uploads").mkdir(parents=True, exist_ok=True)
        self.address = ("127.0.0.1", free_port())
        env = child_env() | {
            "RELAY_HTTP_ADDR": self.address[0],
            "RELAY_HTTP_PORT": str(self.address[1]),
            "RELAY_SOCKET": backend_socket,
            "RELAY_LIGHTTPD_DIR": str(state),
        } | (extra_env or {})
        argv = ["lighttpd", "-D", "-f", str(conf)]
        self.service = Service("lighttpd", argv, workdir / "lighttpd.log", env=env)
        self.service.wait_ready([self.address])

    def stop(self) -> None:
        self.service.stop()
