"""Counters for the hot path, turned into Prometheus text only when someone asks.

Finished requests are counted in batches, from the audit log's notes as it flushes them
(every 0.2 s, and before every snapshot), into plain ints in a dict keyed by ``(flow,
status, reason)``: no locks (one event loop per process), no label objects, no
formatting, nothing per request. At scrape time
:meth:`Metrics.snapshot` copies everything into a JSON-able :class:`Snapshot`;
:func:`merge` sums the snapshots of several worker processes, and :func:`render` turns a
snapshot into the text exposition format with prometheus_client's own encoder (a private
registry holding one collector, so nothing global is touched).

Metrics (all names start with ``relay_``):

``relay_requests_total{flow,status,reason}``
    counter; requests finished. ``flow`` is ``-`` for requests that matched no flow.
``relay_request_duration_seconds{flow}``
    histogram; from the request head to the last byte of the answer.
``relay_received_bytes_total{flow}`` / ``relay_sent_bytes_total{flow}``
    counters; request body bytes read from clients, response bytes written to them.
``relay_token_cache_lookups_total{result}``
    counter; ``result`` is ``hit`` or ``miss``.
``relay_jwks_fetches_total{issuer,result}``
    counter; ``result`` is ``ok`` or ``error``.
``relay_sink_latency_seconds{sink}``
    histogram; how long each sink took to accept a request's data.
``relay_connections``, ``relay_in_flight_requests``
    gauges read at scrape time; summed over workers.
``relay_event_loop_lag_seconds``
    gauge; the worst event-loop delay of the last 30-60 s (:class:`EventLoopLag`); the
    maximum over workers.
``relay_policy_version``
    gauge; 1 at start, +1 per successful reload; the maximum over workers.
``relay_audit_pending_records``, ``relay_audit_write_failures``
    gauges; audit records waiting to be written (many only while the log cannot be
    written), and failed writes of the audit log since start; summed over workers.
``relay_signing_keys_published``, ``relay_signing_key_age_seconds``
    gauges; relay's own keys in its JWKS (2 or 3 around a rotation), and how long the
    current one has signed (past ``identity_key_rotation``: rotation is stuck); the
    maximum over workers, 0 while relay signs nothing.
``relay_response_cache_*{flow}``
    the response caches' lookups, hit ratio and bytes (see :mod:`relay.cache_metrics`).
``relay_rate_limit_requests_total``, ``relay_rate_limit_errors_total``
    per flow and limit: see ``relay.metrics_ratelimit``.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal, TypedDict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay.cache_metrics import CacheRow, cache_families, merge_cache_rows
from relay.errors import BadGateway, GatewayTimeout, InsufficientStorage, ServiceUnavailable
from relay.metrics_ratelimit import RateLimitRow, merge_rate_limits, rate_limit_families
from relay.timers import Ticker

if TYPE_CHECKING:
    from relay.audit import ExchangeNote

__all__ = [
    "DURATION_BUCKETS", "GAUGES", "EventLoopLag", "FlowStats", "Metrics", "Snapshot",
    "SINK_FAILURES", "flow_stats", "merge", "quantile", "render", "requests_since",
]

#: upper bounds (seconds) of the duration histograms; one more slot counts the rest (+Inf)
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
_SLOTS = len(DURATION_BUCKETS) + 1
# the "le" label values; repr() of these bounds is already what Prometheus writes
_LE: tuple[str, ...] = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")

#: the audit reasons (and metrics' ``reason`` label) of a request a sink failed
SINK_FAILURES = frozenset(e.code for e in (BadGateway, ServiceUnavailable, GatewayTimeout, InsufficientStorage))

#: gauges the server may feed with :meth:`Metrics.watch`: help text, and how workers combine
GAUGES: dict[str, tuple[str, Literal["sum", "max"]]] = {
    "relay_connections": ("Client connections open.", "sum"),
    "relay_in_flight_requests": ("Requests being relayed.", "sum"),
    "relay_event_loop_lag_seconds": ("Worst event-loop delay in the last 30-60 s.", "max"),
    "relay_policy_version": ("Version of the policy in force (1 at start, +1 per reload).", "max"),
    "relay_audit_pending_records": ("Audit records waiting to be written.", "sum"),
    "relay_audit_write_failures": ("Failed writes of the audit log since start.", "sum"),
    "relay_shared_state_in_sync": ("1 while subscribed to the shared state in Redis with its snapshot read.", "max"),
    "relay_shared_state_disconnects": ("Sessions with the shared state's Redis lost since start.", "sum"),
    "relay_shared_state_unsynced_requests": (
        "Requests of fail-open flows served on local state while out of sync with Redis.", "sum"),
    "relay_signing_keys_published": ("relay's own signing keys its JWKS lists.", "max"),
    "relay_signing_key_age_seconds": ("How long relay's current signing key has signed.", "max"),
    "relay_gc_collected_objects": (
        "Objects Python's cyclic garbage collector found unreachable since start (requests leave none).", "sum"),
}


class RequestRow(TypedDict):
    flow: str
    status: int
    reason: str
    count: int
    bytes_in: int
    bytes_out: int
    seconds: float  # sum of durations
    buckets: list[int]  # per bucket, not cumulative; the last slot is +Inf


class JwksRow(TypedDict):
    issuer: str
    ok: bool
    count: int


class LatencyRow(TypedDict):
    sink: str
    seconds: float
    buckets: list[int]


class Snapshot(TypedDict):
    """Everything one process counted, as plain JSON-able data."""

    requests: list[RequestRow]
    token_cache: dict[str, int]  # "hit" / "miss" → lookups
    jwks_fetches: list[JwksRow]
    sink_latency: list[LatencyRow]
    rate_limits: list[RateLimitRow]
    gauges: dict[str, float]
    response_cache: list[CacheRow]  # one row per caching flow


class FlowStats(TypedDict):
    """One row of the admin ``stats`` table."""

    flow: str
    requests: int
    ok: int  # 2xx and 3xx
    client_errors: int  # 4xx
    server_errors: int  # 5xx
    denied: int  # 401 and 403: the caller may not
    sink_errors: int  # a sink failed, timed out or was full (502, 503, 504, 507 from a sink)
    bytes_in: int
    bytes_out: int
    mean_ms: float
    p50_ms: float  # estimated from the duration histogram, as Prometheus' histogram_quantile does
    p99_ms: float


class _RequestCounts:
    __slots__ = ("count", "bytes_in", "bytes_out", "seconds", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.seconds = 0.0
        self.buckets = [0] * _SLOTS


class _Latency:
    __slots__ = ("buckets", "seconds")

    def __init__(self) -> None:
        self.buckets = [0] * _SLOTS
        self.seconds = 0.0


class Metrics:
    """One process's counters. Only the event-loop thread may call the recording methods."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, int, str], _RequestCounts] = {}
        self._cache = {"hit": 0, "miss": 0}
        self._jwks: dict[tuple[str, bool], int] = {}
        self._sinks: dict[str, _Latency] = {}
        self._rate_limits: list[RateLimitRow] = []
        self._gauges: dict[str, Callable[[], float]] = {}
        self._refreshers: list[Callable[[Metrics], None]] = []
        self._response_caches: list[CacheRow] = []

    # --- recording (hot path) -------------------------------------------------------------

    def request_done(self, flow: str, status: int, reason: str, bytes_in: int, bytes_out: int,
                     seconds: float) -> None:
        """Count one finished request (``flow`` is ``"-"`` when it matched none)."""
        key = (flow, status, reason)
        row = self._requests.get(key)
        if row is None:
            row = self._requests[key] = _RequestCounts()
        row.count += 1
        row.bytes_in += bytes_in
        row.bytes_out += bytes_out
        row.seconds += seconds
        # bisect_left: a duration equal to a bound belongs to that bucket (Prometheus "le")
        row.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def count_exchanges(self, notes: list[ExchangeNote]) -> None:
        """Count a batch of finished exchanges, as the audit log noted them."""
        request_done = self.request_done
        for note in notes:
            request_done(note.flow or "-", note.status, note.reason, note.bytes_in, note.bytes_out, note.seconds)
            if note.sink_seconds is not None and note.sink is not None:
                self.sink_latency(note.sink, note.sink_seconds)

    def token_cache(self, hit: bool) -> None:
        self._cache["hit" if hit else "miss"] += 1

    def jwks_fetch(self, issuer: str, ok: bool) -> None:
        key = (issuer, ok)
        self._jwks[key] = self._jwks.get(key, 0) + 1

    def sink_latency(self, sink: str, seconds: float) -> None:
        latency = self._sinks.get(sink)
        if latency is None:
            latency = self._sinks[sink] = _Latency()
        latency.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        latency.seconds += seconds

    def set_token_cache(self, hits: int, misses: int) -> None:
        """The cache's own running totals (for a cache that counts itself)."""
        self._cache["hit"], self._cache["miss"] = hits, misses

    def set_jwks_fetches(self, issuer: str, ok: int, failed: int) -> None:
        """An issuer's running fetch totals (for key stores that count themselves)."""
        self._jwks[(issuer, True)] = ok
        self._jwks[(issuer, False)] = failed

    def set_response_caches(self, rows: list[CacheRow]) -> None:
        """The response caches' running totals (they count for themselves)."""
        self._response_caches = rows

    def set_rate_limits(self, rows: list[RateLimitRow]) -> None:
        """The rate limits' own running totals (they count themselves)."""
        self._rate_limits = rows

    def on_snapshot(self, refresh: Callable[[Metrics], None]) -> None:
        """Call ``refresh(self)`` before every snapshot: counters another object keeps anyway
        are copied in at scrape time instead of being counted again per request."""
        self._refreshers.append(refresh)

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """Report gauge ``name`` (a key of :data:`GAUGES`) as ``read()`` at every scrape."""
        if name not in GAUGES:
            raise ValueError(f"unknown gauge {name!r}; known: {', '.join(GAUGES)}")
        self._gauges[name] = read

    # --- reading (scrape time) ------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A copy of every counter, and every watched gauge read now."""
        for refresh in self._refreshers:
            refresh(self)
        return Snapshot(
            requests=[
                RequestRow(flow=flow, status=status, reason=reason, count=row.count,
                           bytes_in=row.bytes_in, bytes_out=row.bytes_out, seconds=row.seconds,
                           buckets=list(row.buckets))
                for (flow, status, reason), row in self._requests.items()
            ],
            token_cache=dict(self._cache),
            jwks_fetches=[JwksRow(issuer=issuer, ok=ok, count=n) for (issuer, ok), n in self._jwks.items()],
            sink_latency=[
                LatencyRow(sink=sink, seconds=latency.seconds, buckets=list(latency.buckets))
                for sink, latency in self._sinks.items()
            ],
            rate_limits=[RateLimitRow(**row) for row in self._rate_limits],
            gauges={name: float(read()) for name, read in self._gauges.items()},
            response_cache=list(self._response_caches),
        )

    def render(self) -> bytes:
        """This process's metrics in the Prometheus text format."""
        return render(self.snapshot())


def _add(into: list[int], counts: list[int]) -> None:
    for i, n in enumerate(counts):
        into[i] += n


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Combine several processes' snapshots: counters add up, gauges per :data:`GAUGES`."""
    requests: dict[tuple[str, int, str], RequestRow] = {}
    cache = {"hit": 0, "miss": 0}
    jwks: dict[tuple[str, bool], JwksRow] = {}
    sinks: dict[str, LatencyRow] = {}
    gauges: dict[str, float] = {}
    caches: list[CacheRow] = []
    limits: list[RateLimitRow] = []
    for snap in snapshots:
        caches += snap["response_cache"]
        limits += snap["rate_limits"]
        for r in snap["requests"]:
            key = (r["flow"], r["status"], r["reason"])
            into = requests.get(key)
            if into is None:
                requests[key] = {**r, "buckets": list(r["buckets"])}
                continue
            into["count"] += r["count"]
            into["bytes_in"] += r["bytes_in"]
            into["bytes_out"] += r["bytes_out"]
            into["seconds"] += r["seconds"]
            _add(into["buckets"], r["buckets"])
        for result, n in snap["token_cache"].items():
            cache[result] = cache.get(result, 0) + n
        for j in snap["jwks_fetches"]:
            jwks.setdefault((j["issuer"], j["ok"]), JwksRow(issuer=j["issuer"], ok=j["ok"], count=0))["count"] += j["count"]
        for s in snap["sink_latency"]:
            latency = sinks.setdefault(s["sink"], LatencyRow(sink=s["sink"], seconds=0.0, buckets=[0] * _SLOTS))
            latency["seconds"] += s["seconds"]
            _add(latency["buckets"], s["buckets"])
        for name, value in snap["gauges"].items():
            how = GAUGES[name][1] if name in GAUGES else "sum"
            seen = gauges.get(name)
            gauges[name] = value if seen is None else (seen + value if how == "sum" else max(seen, value))
    return Snapshot(requests=list(requests.values()), token_cache=cache, jwks_fetches=list(jwks.values()),
                    sink_latency=list(sinks.values()), gauges=gauges,
                    rate_limits=merge_rate_limits(limits), response_cache=merge_cache_rows(caches))


def requests_since(now: Snapshot, before: Snapshot) -> Snapshot:
    """``now`` with its request counters less those of the earlier ``before`` (of the same
    process or group): what happened in between. Other counters are ``now``'s."""
    earlier = {(r["flow"], r["status"], r["reason"]): r for r in before["requests"]}
    rows: list[RequestRow] = []
    for r in now["requests"]:
        old = earlier.get((r["flow"], r["status"], r["reason"]))
        if old is None:
            rows.append(r)
        elif r["count"] > old["count"]:
            rows.append(RequestRow(
                flow=r["flow"], status=r["status"], reason=r["reason"], count=r["count"] - old["count"],
                bytes_in=r["bytes_in"] - old["bytes_in"], bytes_out=r["bytes_out"] - old["bytes_out"],
                seconds=r["seconds"] - old["seconds"], buckets=[n - o for n, o in zip(r["buckets"], old["buckets"])],
            ))
    return Snapshot(requests=rows, token_cache=now["token_cache"], jwks_fetches=now["jwks_fetches"],
                    sink_latency=now["sink_latency"], rate_limits=now["rate_limits"], gauges=now["gauges"],
                    response_cache=now["response_cache"])


def flow_stats(snapshot: Snapshot) -> list[FlowStats]:
    """Per-flow totals for the admin ``stats`` command, flows in name order."""
    rows: dict[str, FlowStats] = {}
    seconds: dict[str, float] = {}
    buckets: dict[str, list[int]] = {}
    for r in snapshot["requests"]:
        row = rows.setdefault(r["flow"], FlowStats(flow=r["flow"], requests=0, ok=0, client_errors=0,
                                                   server_errors=0, denied=0, sink_errors=0, bytes_in=0,
                                                   bytes_out=0, mean_ms=0.0, p50_ms=0.0, p99_ms=0.0))
        row["requests"] += r["count"]
        if r["status"] >= 500:
            row["server_errors"] += r["count"]
        elif r["status"] >= 400:
            row["client_errors"] += r["count"]
        else:
            row["ok"] += r["count"]
        if r["status"] in (401, 403):
            row["denied"] += r["count"]
        elif r["reason"] in SINK_FAILURES:
            row["sink_errors"] += r["count"]
        row["bytes_in"] += r["bytes_in"]
        row["bytes_out"] += r["bytes_out"]
        seconds[r["flow"]] = seconds.get(r["flow"], 0.0) + r["seconds"]
        _add(buckets.setdefault(r["flow"], [0] * _SLOTS), r["buckets"])
    for flow, row in rows.items():
        if row["requests"]:
            row["mean_ms"] = round(seconds[flow] * 1000 / row["requests"], 3)
            row["p50_ms"] = round(quantile(buckets[flow], 0.5) * 1000, 3)
            row["p99_ms"] = round(quantile(buckets[flow], 0.99) * 1000, 3)
    return [rows[flow] for flow in sorted(rows)]


def quantile(counts: list[int], q: float) -> float:
    """The ``q``-quantile (0 < q < 1) in seconds of a duration histogram's per-bucket counts.

    Linear within the bucket holding it, as Prometheus' ``histogram_quantile`` estimates:
    the answer is only as fine as :data:`DURATION_BUCKETS`. A quantile in the +Inf bucket
    is reported as the largest finite bound; an empty histogram gives 0.
    """
    total = sum(counts)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(counts[:-1]):
        if n and seen + n >= rank:
            lower = DURATION_BUCKETS[i - 1] if i else 0.0
            return lower + (DURATION_BUCKETS[i] - lower) * (rank - seen) / n
        seen += n
    return DURATION_BUCKETS[-1]


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts → Prometheus's cumulative ``le`` buckets, ending with +Inf."""
    out: list[tuple[str, float]] = []
    total = 0
    for le, n in zip(_LE, counts):
        total += n
        out.append((le, total))
    return out


class _SnapshotCollector(Collector):
    """Builds the metric families from one snapshot each time the registry is collected."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        requests = CounterMetricFamily("relay_requests", "Requests finished.",
                                       labels=("flow", "status", "reason"))
        received = CounterMetricFamily("relay_received_bytes", "Request body bytes read from clients.",
                                       labels=("flow",))
        sent = CounterMetricFamily("relay_sent_bytes", "Response bytes written to clients.", labels=("flow",))
        per_flow: dict[str, tuple[list[int], list[float]]] = {}  # flow → (buckets, [sum, in, out])
        for r in snap["requests"]:
            requests.add_metric((r["flow"], str(r["status"]), r["reason"]), r["count"])
            buckets, totals = per_flow.setdefault(r["flow"], ([0] * _SLOTS, [0.0, 0.0, 0.0]))
            _add(buckets, r["buckets"])
            totals[0] += r["seconds"]
            totals[1] += r["bytes_in"]
            totals[2] += r["bytes_out"]
        duration = HistogramMetricFamily("relay_request_duration_seconds",
                                         "Time from the request head to the end of the answer.",
                                         labels=("flow",))
        for flow, (buckets, totals) in per_flow.items():
            duration.add_metric((flow,), _buckets(buckets), totals[0])
            received.add_metric((flow,), totals[1])
            sent.add_metric((flow,), totals[2])
        yield from (requests, duration, received, sent)

        cache = CounterMetricFamily("relay_token_cache_lookups", "Verified-token cache lookups.",
                                    labels=("result",))
        for result, n in snap["token_cache"].items():
            cache.add_metric((result,), n)
        yield cache

        jwks = CounterMetricFamily("relay_jwks_fetches", "JWKS fetches by issuer.", labels=("issuer", "result"))
        for j in snap["jwks_fetches"]:
            jwks.add_metric((j["issuer"], "ok" if j["ok"] else "error"), j["count"])
        yield jwks

        latency = HistogramMetricFamily("relay_sink_latency_seconds",
                                        "Time a sink took to accept a request's data.", labels=("sink",))
        for s in snap["sink_latency"]:
            latency.add_metric((s["sink"],), _buckets(s["buckets"]), s["seconds"])
        yield latency
        yield from rate_limit_families(snap["rate_limits"])
        yield from cache_families(snap["response_cache"])

        for name, value in snap["gauges"].items():
            yield GaugeMetricFamily(name, GAUGES[name][0] if name in GAUGES else name, value=value)


def render(snapshot: Snapshot) -> bytes:
    """``snapshot`` (one process's, or a :func:`merge` of several) in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


class EventLoopLag(Ticker):
    """Measures how late one periodic timer fires: the event loop's responsiveness.

    One timer every ``interval`` seconds, nothing per request. :attr:`seconds` is the
    worst lateness seen in the current and the previous ``window`` (so a stall stays
    visible for at least one window, whenever it is scraped).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.5, window: float = 30.0) -> None:
        super().__init__(loop, interval)
        self._ticks_per_window = max(1, round(window / interval))
        self._ticks = 0
        self._current = 0.0
        self._previous = 0.0

    @property
    def seconds(self) -> float:
        return max(self._current, self._previous)

    def _tick(self, now: float, late: float) -> None:
        self._current = max(self._current, late)
        self._ticks += 1
        if self._ticks >= self._ticks_per_window:
            self._previous, self._current, self._ticks = self._current, 0.0, 0
