"""The rate limits' counters in the metrics: one row per flow and limit.

``relay_rate_limit_requests_total{flow,limit,mode,result}``
    counter; ``result`` is ``admitted`` (charged to the limit) or ``limited`` (refused by
    it, answered 429). A request all of a flow's limits admit counts once under each.
``relay_rate_limit_errors_total{flow,limit,mode}``
    counter; checks of a shared limit Redis could not answer (unreachable, too slow, an
    error). The flow's ``shared_state`` answered them: 503, or a count in the process,
    which is then counted as admitted or limited too.

The limits count themselves (``relay.ratelimit.Buckets``); the rows are copied at scrape
time. A limit a reload changes starts again from 0, as a restarted process would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypedDict

from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["RateLimitRow", "merge_rate_limits", "rate_limit_families"]


class RateLimitRow(TypedDict):
    flow: str
    limit: str
    mode: str  # "local" | "shared"
    admitted: int
    limited: int
    errors: int


def merge_rate_limits(rows: Iterable[RateLimitRow]) -> list[RateLimitRow]:
    """Several processes' rows, summed per flow and limit."""
    merged: dict[tuple[str, str, str], RateLimitRow] = {}
    for row in rows:
        into = merged.get((row["flow"], row["limit"], row["mode"]))
        if into is None:
            merged[(row["flow"], row["limit"], row["mode"])] = RateLimitRow(**row)
            continue
        into["admitted"] += row["admitted"]
        into["limited"] += row["limited"]
        into["errors"] += row["errors"]
    return list(merged.values())


def rate_limit_families(rows: list[RateLimitRow]) -> Iterator[Metric]:
    requests = CounterMetricFamily("relay_rate_limit_requests", "Requests a rate limit admitted or refused.",
                                   labels=("flow", "limit", "mode", "result"))
    errors = CounterMetricFamily("relay_rate_limit_errors", "Checks of a shared rate limit Redis did not answer.",
                                 labels=("flow", "limit", "mode"))
    for row in rows:
        labels = (row["flow"], row["limit"], row["mode"])
        requests.add_metric((*labels, "admitted"), row["admitted"])
        requests.add_metric((*labels, "limited"), row["limited"])
        errors.add_metric(labels, row["errors"])
    yield from (requests, errors)
