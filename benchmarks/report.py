"""The report: Markdown tables (the same text on stdout and in RESULTS.md), the
comparisons with their targets, and the JSON record of every run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.runner import Outcome
from benchmarks.scenarios import Comparison

MIB = 1024 * 1024

METHOD = """\
- wrk -t2 -c64 for request rates (-t1 -c1 for the 64 MiB POSTs), one fresh start of the
  system under test per run; the figures are medians over the runs.
- CPU µs/request: utime + stime of the process under test (/proc/PID/stat) over the run,
  divided by the requests wrk completed. On a busy machine this moves far less than
  req/s. For the chains, relayd and lighttpd are counted separately.
- Upstreams, on the load CPU: lighttpd serving a 100-byte file for the GETs; for the
  POSTs benchmarks/discard.py, which reads each body into one reused buffer and drops it
  (≈ 2.5 GB/s alone here; lighttpd's own CGI path managed ≈ 350 MB/s, too slow to
  measure the chains). relayd, HAProxy and the Python proxies reach them over TCP with
  keep-alive, the front lighttpd over their Unix sockets.
- lighttpd writes streamed request bodies through temporary files in its upload
  directory (open, pwritev, sendfile, unlink per ~12 KB chunk), so the run's working
  directory is on tmpfs (/dev/shm) when there is one: on disk, uploads through lighttpd
  swing by 2× with the filesystem's mood.
- Tokens: RS256 (RSA-2048) and ES256 (P-256), claims iss/aud/sub/groups/exp. "one token":
  the same token on every request; "100k tokens": round-robin through 100,000 distinct
  ones. Before each run a valid request must get a 2xx and, with tokens, requests without
  a token or with a forged signature must get 401/403.
- HAProxy: nbthread 1; with tokens `http-request` rules check alg, `jwt_verify`, exp,
  iss, aud and the first `groups` entry (2.6 cannot search a JSON array).
- aiohttp proxy: benchmarks/aiohttp_proxy.py (uvloop, pooled client session, `jwt.decode`).
- floor proxy: benchmarks/floor_proxy.py, uvloop + httptools with pooled keep-alive
  upstream connections and no checks at all: what Python, uvloop and the kernel cost per
  request before relay does any work of its own.
- Comparisons, "measured": the ratio of median req/s (MB/s), which a busy machine
  disturbs; "per core (CPU)": the ratio of what one core could serve, 1 / (CPU
  µs/request summed over the measured processes, which share the CPU under test).
- spread: (max − min) / median of the runs' rates. errors: responses ≥ 400 plus socket
  errors, as wrk counts them; anything but 0 is flagged."""


def _figure(outcome: Outcome | None, metric: str, by_cpu: bool) -> float | None:
    if outcome is None or not outcome.runs:
        return None
    if metric == "relayd_cpu_us":
        return outcome.cpu_us().get("relayd")
    if metric == "cpu_us":
        return sum(outcome.cpu_us().values()) or None
    if metric == "relayd_rss_mib":
        rss = outcome.peak_rss("relayd")
        return None if rss is None else rss / MIB
    if by_cpu:
        # what one core could serve: the measured processes share the CPU under test
        cpu = sum(outcome.cpu_us().values())
        return 1e6 / cpu if cpu else None
    return outcome.median(metric)


def _why_missing(outcome: Outcome | None) -> str:
    if outcome is None:
        return "n/a: not run"
    return f"n/a: {'pending' if outcome.pending else 'failed' if outcome.failure else 'no runs'}"


def evaluate(comparison: Comparison, by_name: dict[str, Outcome],
             by_cpu: bool = False) -> tuple[float | None, str]:
    """The comparison's value, and "met", "missed", "" (no target) or why it has none.

    ``by_cpu`` compares what one core could serve (from CPU µs per request) instead of
    what was measured: the same question, asked of the figure a busy machine disturbs
    least. It only applies to ratios of rates; for the others it is None, "".
    """
    if by_cpu and (comparison.baseline is None or comparison.metric not in ("rate", "mb_s")):
        return None, ""
    subject = by_name.get(comparison.subject)
    value = _figure(subject, comparison.metric, by_cpu)
    if value is None:
        return None, _why_missing(subject)
    if comparison.baseline is not None:
        baseline = by_name.get(comparison.baseline)
        base = _figure(baseline, comparison.metric, by_cpu)
        if not base:
            return None, f"{_why_missing(baseline)} (baseline)"
        value /= base
    if comparison.target is None:
        return value, ""
    met = {">=": value >= comparison.target, "<=": value <= comparison.target,
           "<": value < comparison.target}[comparison.op]
    return value, "met" if met else "missed"


def _unit(comparison: Comparison) -> str:
    if comparison.baseline is not None:
        return "×"
    return " µs" if comparison.metric in ("cpu_us", "relayd_cpu_us") else " MiB"


# --- Markdown ---------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _note(outcome: Outcome) -> str:
    if outcome.pending:
        return f"pending: {outcome.pending}"
    if outcome.failure:
        done = f" after {len(outcome.runs)} run(s)" if outcome.runs else ""
        # the whole message is in the JSON; a table cell gets one line: its start (what
        # failed) and its end (usually the error a log ended with)
        text = " ".join(outcome.failure.replace("|", "/").split())
        if len(text) > 160:
            text = f"{text[:60]} … {text[-100:]}"
        return f"FAILED{done}: {text}"
    return ""


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return "–"
    return f"{(max(values) - min(values)) / statistics.median(values) * 100:.0f}%"


def _errors(outcome: Outcome) -> str:
    count = sum(outcome.errors().values())
    return f"**{count}** ⚠" if count else "0"


def _cpu(outcome: Outcome, scale: float = 1.0, digits: int = 1) -> str:
    return " · ".join(f"{role} {us * scale:.{digits}f}" for role, us in outcome.cpu_us().items())


def _median(outcome: Outcome, name: str) -> float:
    value = outcome.median(name)
    assert value is not None, "only called for outcomes with runs"
    return value


def rates_table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        if not o.runs:
            rows.append([o.scenario.label, "–", "–", "–", "–", "–", "–", _note(o)])
            continue
        rows.append([o.scenario.label, f"{_median(o, 'rate'):,.0f}", _spread([r.rate for r in o.runs]),
                     f"{_median(o, 'p50_us') / 1000:.2f}", f"{_median(o, 'p99_us') / 1000:.2f}",
                     _cpu(o), _errors(o), _note(o)])
    return _table(["scenario", "req/s", "spread", "p50 ms", "p99 ms", "CPU µs/request",
                   "errors", "note"], rows, right={1, 2, 3, 4, 6})


def transfers_table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        if not o.runs:
            rows.append([o.scenario.label, "–", "–", "–", "–", "–", "–", _note(o)])
            continue
        rss = o.peak_rss("relayd")
        rows.append([o.scenario.label, f"{_median(o, 'mb_s'):,.0f}", _spread([r.mb_s for r in o.runs]),
                     f"{_median(o, 'p50_us') / 1000:.0f}", _cpu(o, 1e-3 / (o.scenario.transfer / 1e6), 2),
                     "–" if rss is None else f"{rss / MIB:.0f}", _errors(o), _note(o)])
    return _table(["scenario", "MB/s", "spread", "p50 ms", "CPU ms/MB", "relayd peak RSS MiB",
                   "errors", "note"], rows, right={1, 2, 3, 5, 6})


def comparisons_table(comparisons: list[Comparison], outcomes: list[Outcome]) -> str:
    by_name = {o.scenario.name: o for o in outcomes}
    rows = []
    for c in comparisons:
        value, verdict = evaluate(c, by_name)
        cpu_value, cpu_verdict = evaluate(c, by_name, by_cpu=True)
        target = "" if c.target is None else f"{c.op} {c.target:g}{_unit(c)}"
        rows.append([c.label, "–" if value is None else f"{value:.2f}{_unit(c)}", target, verdict,
                     "" if cpu_value is None else f"{cpu_value:.2f}×",
                     cpu_verdict if cpu_value is not None else ""])
    return _table(["comparison", "measured", "target", "verdict", "per core (CPU)", "verdict"],
                  rows, right={1, 4})


def warnings(outcomes: list[Outcome]) -> list[str]:
    lines = []
    for o in outcomes:
        errors = o.errors()
        if sum(errors.values()):
            detail = ", ".join(f"{kind} {n}" for kind, n in errors.items() if n)
            lines.append(f"WARNING: {o.scenario.label}: {sum(errors.values())} failed requests "
                         f"({detail}); its figures are not comparable")
    return lines


def tables(outcomes: list[Outcome], comparisons: list[Comparison]) -> str:
    rates = [o for o in outcomes if not o.scenario.transfer]
    uploads = [o for o in outcomes if o.scenario.upload]
    downloads = [o for o in outcomes if o.scenario.download]
    parts = []
    if rates:
        parts += ["### Request rates", rates_table(rates)]
    if uploads:
        parts += ["### 64 MiB POSTs", transfers_table(uploads)]
    if downloads:
        parts += ["### 1 GiB GETs (files sink)", transfers_table(downloads)]
    parts += ["### Comparisons", comparisons_table(comparisons, outcomes)]
    found = warnings(outcomes)
    if found:
        parts.append("\n".join(found))
    return "\n\n".join(parts) + "\n"


# --- JSON -------------------------------------------------------------------------------

def to_json(outcomes: list[Outcome], comparisons: list[Comparison], *,
            meta: dict[str, Any]) -> dict[str, Any]:
    by_name = {o.scenario.name: o for o in outcomes}
    scenarios = []
    for o in outcomes:
        scenarios.append({
            "name": o.scenario.name, "label": o.scenario.label, "path": o.scenario.path,
            "script": o.scenario.load.script, "auth": o.scenario.auth,
            "pending": o.pending, "failure": o.failure,
            "median": {"rate": o.median("rate"), "mb_s": o.median("mb_s") if o.scenario.transfer else None,
                       "p50_us": o.median("p50_us"), "p99_us": o.median("p99_us"),
                       "cpu_us_per_request": o.cpu_us()},
            "errors": o.errors(),
            "runs": [asdict(run) | {"rate": run.rate} for run in o.runs],
        })
    results = []
    for c in comparisons:
        value, verdict = evaluate(c, by_name)
        cpu_value, cpu_verdict = evaluate(c, by_name, by_cpu=True)
        results.append(asdict(c) | {"value": value, "verdict": verdict,
                                    "per_core_value": cpu_value, "per_core_verdict": cpu_verdict})
    return meta | {"scenarios": scenarios, "comparisons": results}
