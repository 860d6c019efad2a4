"""Runs the scenarios: repetitions interleaved, each run on freshly started processes.

A run starts the system under test, probes it (a valid request must get a 2xx; with
tokens, one without a token and one with a forged signature must get 401/403, so a
system that does not check tokens is never measured as if it did), reads the CPU time
of the measured processes, runs wrk, reads them again, and stops everything it started.
Repetitions are interleaved (every scenario once, then again) so that a noisy spell on
the machine spreads over all scenarios instead of sinking one. A scenario that fails is
reported as such and skipped afterwards; the others go on.

relayd's token scenarios are "pending", not failed, while relay cannot verify tokens:
before tools/devtoken and relay.identity exist, and while relayd answers 401 to a valid
token (its jwt flows fail closed until verification is wired into the request path).
"""

from __future__ import annotations

import http.client
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.loadgen import run_wrk
from benchmarks.scenarios import Scenario
from benchmarks.procs import Proc
from benchmarks.systems import ROOT, Context, start_upstreams
from benchmarks.tokens import KeyFiles


@dataclass(frozen=True)
class Run:
    """One repetition of a scenario."""

    requests: int
    seconds: float
    p50_us: int
    p99_us: int
    errors: dict[str, int]
    cpu_us: dict[str, float]  # role → CPU µs per request
    peak_rss: dict[str, int]  # role → bytes (VmHWM)
    transfer: int = 0  # bytes per request, when MB/s is the figure


    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def mb_s(self) -> float:
        return self.requests * self.transfer / self.seconds / 1e6


@dataclass
class Outcome:
    scenario: Scenario
    runs: list[Run] = field(default_factory=list)
    failure: str | None = None
    pending: str | None = None

    def median(self, name: str) -> float | None:
        values = [getattr(run, name) for run in self.runs]
        return statistics.median(values) if values else None

    def cpu_us(self) -> dict[str, float]:
        roles = self.runs[0].cpu_us if self.runs else {}
        return {role: statistics.median(run.cpu_us[role] for run in self.runs) for role in roles}

    def peak_rss(self, role: str) -> int | None:
        return max((run.peak_rss[role] for run in self.runs if role in run.peak_rss), default=None)

    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for run in self.runs:
            for kind, count in run.errors.items():
                total[kind] = total.get(kind, 0) + count
        return total


def relay_identity_ready(root: Path = ROOT) -> bool:
    """Token scenarios for relayd wait until relay can mint and verify tokens."""
    return (root / "tools" / "devtoken").is_file() and (root / "relay" / "identity" / "__init__.py").is_file()


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- probes -----------------------------------------------------------------------------

class Pending(Exception):
    """relayd refuses every token: its JWT verification is not wired in yet."""


def _ask(url: str, method: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str]:
    """The status of one request, and the start of the answer's body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        connection.request(method, parts.path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()[:200].decode("utf-8", "replace")
    finally:
        connection.close()


def _forged(token: str) -> str:
    """The token with one character of its signature changed."""
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{swapped}{signature[middle + 1:]}"


def probe(url: str, scenario: Scenario, keys: KeyFiles) -> None:
    method, body = ("POST", b"probe " * 200) if scenario.upload else ("HEAD" if scenario.download else "GET", None)
    if scenario.auth == "none":
        status, answer = _ask(url, method, {}, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"probe: a plain {method} got {status} {answer}")
        return
    token = keys.first_token(scenario.auth)
    status, answer = _ask(url, method, {"Authorization": f"Bearer {token}"}, body)
    if status == 401 and scenario.relay:
        # until verification is wired into the request path, jwt flows fail closed
        raise Pending(f"relayd answers 401 to a valid {scenario.auth} token")
    if not 200 <= status < 300:
        raise RuntimeError(f"probe: a valid {scenario.auth} token got {status} {answer}")
    for what, headers in (("no token", {}),
                          ("a forged signature", {"Authorization": f"Bearer {_forged(token)}"})):
        status, answer = _ask(url, method, headers, body)
        if status not in (401, 403):
            raise RuntimeError(f"probe: a request with {what} got {status}, not 401: "
                               f"tokens are not checked, so there is nothing to measure")


# --- runs -------------------------------------------------------------------------------

def measure(ctx: Context, scenario: Scenario, seconds: float) -> Run:
    """Start, probe, load and stop the scenario's system once."""
    try:
        system = scenario.start(ctx)
        url = system.url + scenario.path
        probe(url, scenario, ctx.keys)
        before = {role: proc.cpu_seconds() for role, proc in system.measured.items()}
        result = run_wrk(url, scenario.load, seconds, ctx.cores.load)
        for role, proc in system.measured.items():
            if not proc.alive():
                raise RuntimeError(f"{role} exited during the run: {proc.log_tail()}")
        requests = max(result.requests, 1)
        cpu_us = {role: (proc.cpu_seconds() - before[role]) * 1e6 / requests
                  for role, proc in system.measured.items()}
        peak_rss = {role: proc.peak_rss() for role, proc in system.measured.items()}
    finally:
        ctx.stop_all()
    return Run(result.requests, result.seconds, result.p50_us, result.p99_us, result.errors,
               cpu_us, peak_rss, scenario.transfer)


def _describe(scenario: Scenario, run: Run) -> str:
    cpu = ", ".join(f"{role} {us:.1f} µs/req" for role, us in run.cpu_us.items())
    rate = f"{run.mb_s:,.0f} MB/s" if scenario.transfer else f"{run.rate:,.0f} req/s"
    errors = sum(run.errors.values())
    return f"{rate}, p99 {run.p99_us / 1000:.2f} ms, {cpu}" + (f", {errors} ERRORS" if errors else "")


def _stop(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop()


def run_all(ctx: Context, scenarios: list[Scenario], repeat: int, seconds: float) -> list[Outcome]:
    outcomes = [Outcome(scenario) for scenario in scenarios]
    if not relay_identity_ready():
        for outcome in outcomes:
            if outcome.scenario.relay and outcome.scenario.auth != "none":
                outcome.pending = "relay's JWT verification is not in yet (no tools/devtoken)"
    progress(f"CPU layout: {ctx.cores.describe()}")
    upstreams = start_upstreams(ctx)
    try:
        for rep in range(1, repeat + 1):
            for outcome in outcomes:
                if outcome.pending or outcome.failure:
                    continue
                if not all(proc.alive() for proc in upstreams):
                    progress("an upstream exited; restarting them: "
                             + " | ".join(proc.log_tail() for proc in upstreams))
                    _stop(upstreams)
                    upstreams = start_upstreams(ctx)
                name = outcome.scenario.name
                progress(f"[{rep}/{repeat}] {name} ...")
                try:
                    run = measure(ctx, outcome.scenario, seconds)
                except Pending as exc:
                    outcome.pending = str(exc)
                    progress(f"[{rep}/{repeat}] {name} pending: {exc}")
                    continue
                except Exception as exc:  # one scenario's failure must not stop the others
                    outcome.failure = f"{type(exc).__name__}: {exc}"
                    progress(f"[{rep}/{repeat}] {name} FAILED: {outcome.failure}")
                    continue
                outcome.runs.append(run)
                progress(f"[{rep}/{repeat}] {name}: {_describe(outcome.scenario, run)}")
    finally:
        ctx.stop_all()
        _stop(upstreams)
    return outcomes
