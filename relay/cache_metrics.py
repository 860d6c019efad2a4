"""The response caches in relay's metrics: one row per caching flow, read at scrape time.

The caches count for themselves (``relay.response_cache.CacheCounters``); a snapshot
copies their totals, workers' rows add up, and the collector turns them into:

``relay_response_cache_lookups_total{flow,result}``
    counter; ``result`` is ``hit`` (a fresh entry), ``revalidated`` (a stale one the
    upstream confirmed with 304) or ``miss``.
``relay_response_cache_hit_ratio{flow}``
    gauge; (hit + revalidated) / lookups since start, 0 before the first lookup.
``relay_response_cache_served_bytes_total{flow}``
    counter; body bytes answered from the cache.
``relay_response_cache_bytes{flow}``, ``relay_response_cache_entries{flow}``
    gauges; what the cache holds now (heads and bodies), summed over workers.
``relay_response_cache_evictions_total{flow}``
    counter; entries pushed out under ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypedDict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from relay.policy import Flow

_COUNTS = ("hits", "misses", "revalidated", "served_bytes", "evictions", "bytes", "entries")


class CacheRow(TypedDict):
    flow: str
    hits: int
    misses: int
    revalidated: int
    served_bytes: int
    evictions: int
    bytes: int
    entries: int


def cache_rows(flows: Iterable[Flow]) -> list[CacheRow]:
    rows: list[CacheRow] = []
    for flow in flows:
        cache = flow.cache
        if cache is None:
            continue
        counters = cache.counters
        rows.append(CacheRow(
            flow=flow.name, hits=counters.hits, misses=counters.misses, revalidated=counters.revalidated,
            served_bytes=counters.served_bytes, evictions=counters.evictions,
            bytes=cache.store.bytes, entries=len(cache.store),
        ))
    return rows


def merge_cache_rows(rows: Iterable[CacheRow]) -> list[CacheRow]:
    """Several workers' rows, added up per flow."""
    merged: dict[str, CacheRow] = {}
    for row in rows:
        into = merged.get(row["flow"])
        if into is None:
            merged[row["flow"]] = CacheRow(**row)
            continue
        for key in _COUNTS:
            into[key] += row[key]  # type: ignore[literal-required]
    return list(merged.values())


def hit_ratio(row: CacheRow) -> float:
    answered = row["hits"] + row["revalidated"]
    lookups = answered + row["misses"]
    return answered / lookups if lookups else 0.0


def cache_families(rows: list[CacheRow]) -> Iterator[Metric]:
    lookups = CounterMetricFamily("relay_response_cache_lookups", "Response cache lookups by outcome.",
                                  labels=("flow", "result"))
    ratio = GaugeMetricFamily("relay_response_cache_hit_ratio",
                              "Share of lookups answered from the response cache (hit or revalidated).",
                              labels=("flow",))
    served = CounterMetricFamily("relay_response_cache_served_bytes",
                                 "Body bytes answered from the response cache.", labels=("flow",))
    held = GaugeMetricFamily("relay_response_cache_bytes", "Bytes the response cache holds.", labels=("flow",))
    entries = GaugeMetricFamily("relay_response_cache_entries", "Entries the response cache holds.",
                                labels=("flow",))
    evictions = CounterMetricFamily("relay_response_cache_evictions",
                                    "Entries pushed out of the response cache under max_bytes.", labels=("flow",))
    for row in rows:
        flow = row["flow"]
        for result, key in (("hit", "hits"), ("revalidated", "revalidated"), ("miss", "misses")):
            lookups.add_metric((flow, result), row[key])  # type: ignore[literal-required]
        ratio.add_metric((flow,), hit_ratio(row))
        served.add_metric((flow,), row["served_bytes"])
        held.add_metric((flow,), row["bytes"])
        entries.add_metric((flow,), row["entries"])
        evictions.add_metric((flow,), row["evictions"])
    yield from (lookups, ratio, served, held, entries, evictions)
