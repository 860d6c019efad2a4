"""Metrics: plain counters in, Prometheus text out (read back with prometheus_client's parser)."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import DURATION_BUCKETS, EventLoopLag, Metrics, Snapshot, flow_stats, merge, quantile, render
from relay.metrics_ratelimit import RateLimitRow


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def busy_metrics() -> Metrics:
    m = Metrics()
    m.request_done("orders", 200, "relayed", 1000, 20, 0.003)
    m.request_done("orders", 200, "relayed", 500, 20, 0.010)  # exactly on a bound: counts as le="0.01"
    m.request_done("orders", 504, "sink_timeout", 0, 60, 45.0)
    m.request_done("-", 404, "no_flow", 0, 50, 0.0001)
    for hit in (True, True, True, False):
        m.token_cache(hit)
    m.jwks_fetch("okta", True)
    m.jwks_fetch("okta", False)
    m.jwks_fetch("okta", True)
    m.sink_latency("api", 0.002)
    m.sink_latency("api", 120.0)  # beyond the last bound: only +Inf
    return m


def test_render_is_valid_prometheus_text() -> None:
    m = busy_metrics()
    m.watch("relay_connections", lambda: 12)
    m.watch("relay_policy_version", lambda: 3)
    s = samples(m.render())

    assert s[("relay_requests_total", labels(flow="orders", status="200", reason="relayed"))] == 2
    assert s[("relay_requests_total", labels(flow="orders", status="504", reason="sink_timeout"))] == 1
    assert s[("relay_requests_total", labels(flow="-", status="404", reason="no_flow"))] == 1
    assert s[("relay_received_bytes_total", labels(flow="orders"))] == 1500
    assert s[("relay_sent_bytes_total", labels(flow="orders"))] == 100

    bucket = "relay_request_duration_seconds_bucket"
    assert s[(bucket, labels(flow="orders", le="0.0025"))] == 0
    assert s[(bucket, labels(flow="orders", le="0.005"))] == 1
    assert s[(bucket, labels(flow="orders", le="0.01"))] == 2
    assert s[(bucket, labels(flow="orders", le="30.0"))] == 2
    assert s[(bucket, labels(flow="orders", le="60.0"))] == 3
    assert s[(bucket, labels(flow="orders", le="+Inf"))] == 3
    assert s[("relay_request_duration_seconds_count", labels(flow="orders"))] == 3
    assert s[("relay_request_duration_seconds_sum", labels(flow="orders"))] == pytest.approx(45.013)

    assert s[("relay_token_cache_lookups_total", labels(result="hit"))] == 3
    assert s[("relay_token_cache_lookups_total", labels(result="miss"))] == 1
    assert s[("relay_jwks_fetches_total", labels(issuer="okta", result="ok"))] == 2
    assert s[("relay_jwks_fetches_total", labels(issuer="okta", result="error"))] == 1

    assert s[("relay_sink_latency_seconds_bucket", labels(sink="api", le="60.0"))] == 1
    assert s[("relay_sink_latency_seconds_bucket", labels(sink="api", le="+Inf"))] == 2
    assert s[("relay_sink_latency_seconds_sum", labels(sink="api"))] == pytest.approx(120.002)

    assert s[("relay_connections", labels())] == 12
    assert s[("relay_policy_version", labels())] == 3
    assert all(name.startswith("relay_") for name, _ in s)


def test_gauges_are_read_at_scrape_time() -> None:
    m = Metrics()
    open_connections = [0]
    m.watch("relay_connections", lambda: open_connections[0])
    assert samples(m.render())[("relay_connections", labels())] == 0
    open_connections[0] = 5
    assert samples(m.render())[("relay_connections", labels())] == 5


def test_unknown_gauge_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown gauge 'relay_conections'"):
        Metrics().watch("relay_conections", lambda: 1)


def test_empty_metrics_render() -> None:
    s = samples(Metrics().render())
    assert s == {("relay_token_cache_lookups_total", labels(result="hit")): 0,
                 ("relay_token_cache_lookups_total", labels(result="miss")): 0}


def test_snapshot_is_json_and_merge_sums_workers() -> None:
    one, two = busy_metrics(), Metrics()
    two.request_done("orders", 200, "relayed", 7, 3, 0.2)
    two.token_cache(False)
    two.jwks_fetch("okta", False)
    two.sink_latency("api", 0.002)
    one.watch("relay_in_flight_requests", lambda: 2)
    two.watch("relay_in_flight_requests", lambda: 3)
    one.watch("relay_event_loop_lag_seconds", lambda: 0.25)
    two.watch("relay_event_loop_lag_seconds", lambda: 0.5)
    # as a supervisor gets them: through JSON
    snaps: list[Snapshot] = [json.loads(json.dumps(m.snapshot())) for m in (one, two)]
    merged = merge(snaps)
    s = samples(render(merged))

    assert s[("relay_requests_total", labels(flow="orders", status="200", reason="relayed"))] == 3
    assert s[("relay_received_bytes_total", labels(flow="orders"))] == 1507
    assert s[("relay_request_duration_seconds_bucket", labels(flow="orders", le="0.25"))] == 3
    assert s[("relay_request_duration_seconds_count", labels(flow="orders"))] == 4
    assert s[("relay_token_cache_lookups_total", labels(result="miss"))] == 2
    assert s[("relay_jwks_fetches_total", labels(issuer="okta", result="error"))] == 2
    assert s[("relay_sink_latency_seconds_count", labels(sink="api"))] == 3
    assert s[("relay_in_flight_requests", labels())] == 5  # summed
    assert s[("relay_event_loop_lag_seconds", labels())] == 0.5  # the worst worker
    # merging must not alter its inputs (a supervisor may keep them)
    assert snaps[0]["requests"][0]["count"] == 2


def test_rate_limits_are_counted_per_flow_and_limit_and_summed_over_workers() -> None:
    one, two = Metrics(), Metrics()
    one.set_rate_limits([RateLimitRow(flow="orders", limit="subject", mode="shared", admitted=5, limited=2, errors=1),
                         RateLimitRow(flow="orders", limit="client", mode="local", admitted=7, limited=0, errors=0)])
    two.set_rate_limits([RateLimitRow(flow="orders", limit="subject", mode="shared", admitted=3, limited=4, errors=0)])
    snaps: list[Snapshot] = [json.loads(json.dumps(m.snapshot())) for m in (one, two)]
    s = samples(render(merge(snaps)))
    shared = {"flow": "orders", "limit": "subject", "mode": "shared"}
    assert s[("relay_rate_limit_requests_total", labels(**shared, result="admitted"))] == 8
    assert s[("relay_rate_limit_requests_total", labels(**shared, result="limited"))] == 6
    assert s[("relay_rate_limit_errors_total", labels(**shared))] == 1
    assert s[("relay_rate_limit_requests_total",
              labels(flow="orders", limit="client", mode="local", result="admitted"))] == 7
    assert snaps[0]["rate_limits"][0]["admitted"] == 5  # the inputs are left as they were


def test_flow_stats() -> None:
    rows = flow_stats(busy_metrics().snapshot())
    assert [r["flow"] for r in rows] == ["-", "orders"]
    orders = rows[1]
    assert (orders["requests"], orders["ok"], orders["client_errors"], orders["server_errors"]) == (3, 2, 0, 1)
    assert (orders["bytes_in"], orders["bytes_out"]) == (1500, 100)
    assert orders["mean_ms"] == pytest.approx(15004.333, abs=0.001)
    # p50 within the 5-10 ms bucket (the 2nd of 3), p99 near the top of the 30-60 s one
    assert orders["p50_ms"] == pytest.approx(7.5)
    assert orders["p99_ms"] == pytest.approx(59100.0)
    assert rows[0]["client_errors"] == 1


def test_quantile_interpolates_within_its_bucket() -> None:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    assert quantile(counts, 0.5) == 0.0  # nothing counted yet
    counts[0] = 99  # under 0.5 ms
    counts[DURATION_BUCKETS.index(0.5) + 1] = 1  # one request between 0.5 s and 1 s
    assert quantile(counts, 0.5) == pytest.approx(0.0005 * 50 / 99)  # the 50th of 100, of the 99 in the first
    assert quantile(counts, 0.99) == pytest.approx(0.0005)
    assert quantile(counts, 0.995) == pytest.approx(0.75)
    counts[-1] = 1000  # beyond every bound: the largest finite bound is the answer
    assert quantile(counts, 0.99) == DURATION_BUCKETS[-1]


def test_buckets_are_sorted_and_positive() -> None:
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS)) and DURATION_BUCKETS[0] > 0


def test_event_loop_lag_sees_a_stall() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        lag = EventLoopLag(loop, interval=0.05)
        lag.start()
        quiet = lag.seconds
        stall_until = loop.time() + 0.3
        while loop.time() < stall_until:  # hog the loop, as a blocking call would
            pass
        # the monitor's timer fell due during the stall; timers run in deadline order,
        # so it has fired by the time one due now runs
        ticked = loop.create_future()
        loop.call_at(loop.time(), ticked.set_result, None)
        await ticked
        lag.stop()
        return quiet, lag.seconds

    quiet, stalled = asyncio.run(scenario())
    assert quiet == 0.0
    assert 0.2 <= stalled < 5.0
