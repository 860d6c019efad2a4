"""Conditional requests around the response cache, and the header-block edits they need."""

from __future__ import annotations

import pytest

from relay.cache_metrics import CacheRow, hit_ratio
from relay.cached_answers import FlowCache
from relay.conditional import not_modified, revalidation_headers, without_conditionals
from relay.config import CacheConfig
from relay.header_block import header_values, list_items, only_fields, updated_with
from relay.identity import Identity
from relay.metrics import Metrics, merge, render
from test_metrics import labels, samples

LAST_MODIFIED = b"Tue, 01 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("request_headers", "expected"),
    [
        (b'If-None-Match: "v1"\r\n', True),
        (b'If-None-Match: "v0", W/"v1"\r\n', True),  # weak comparison
        (b"If-None-Match: *\r\n", True),
        (b'If-None-Match: "v0"\r\n', False),
        # If-None-Match decides when present, whatever If-Modified-Since says
        (b'If-None-Match: "v0"\r\nIf-Modified-Since: Wed, 02 Dec 2026 10:00:00 GMT\r\n', False),
        (b"If-Modified-Since: Wed, 02 Dec 2026 10:00:00 GMT\r\n", True),
        (b"If-Modified-Since: " + LAST_MODIFIED + b"\r\n", True),
        (b"If-Modified-Since: Mon, 30 Nov 2026 10:00:00 GMT\r\n", False),
        (b"If-Modified-Since: not a date\r\n", False),
        (b"Accept: */*\r\n", False),
    ],
)
def test_not_modified(request_headers: bytes, expected: bool) -> None:
    assert not_modified(request_headers, b'"v1"', LAST_MODIFIED) is expected


def test_without_validators_nothing_is_not_modified() -> None:
    assert not not_modified(b'If-None-Match: "v1"\r\n', None, None)
    assert not not_modified(b"If-Modified-Since: " + LAST_MODIFIED + b"\r\n", b'"v1"', None)


def test_the_clients_conditionals_never_go_up() -> None:
    forward = b'Accept: */*\r\nif-none-match: "mine"\r\nIf-Modified-Since: x\r\n'
    assert without_conditionals(forward) == b"Accept: */*\r\n"
    plain = b"Accept: */*\r\n"
    assert without_conditionals(plain) is plain
    assert revalidation_headers(forward, b'"v1"', LAST_MODIFIED) == (
        b'Accept: */*\r\nIf-None-Match: "v1"\r\nIf-Modified-Since: ' + LAST_MODIFIED + b"\r\n")
    assert revalidation_headers(forward, None, LAST_MODIFIED).count(b"If-") == 1


def test_a_304_updates_the_stored_head_field_by_field() -> None:
    stored = b'Content-Type: text/plain\r\nETag: "v1"\r\nCache-Control: max-age=5\r\nX-Seq: 1\r\n'
    update = b"cache-control: max-age=60\r\nX-Seq: 2\r\n"
    head = updated_with(stored, update)
    assert header_values(head, b"cache-control") == [b"max-age=60"]
    assert header_values(head, b"x-seq") == [b"2"]
    assert header_values(head, b"content-type") == [b"text/plain"]
    assert only_fields(head, {b"etag", b"cache-control"}) == b'ETag: "v1"\r\ncache-control: max-age=60\r\n'
    assert list_items([b"Accept, Accept-Language", b" , Cookie"]) == [b"Accept", b"Accept-Language", b"Cookie"]


def _who(subject: str, groups: tuple[str, ...] = ()) -> Identity:
    return Identity(subject, "idp", groups, (), {}, None, "kid", 0)


def test_scope_values_keep_callers_apart() -> None:
    mine = FlowCache(CacheConfig(scope="subject"), ())
    assert mine.scope_value(_who("alice")) != mine.scope_value(_who("bob"))
    assert mine.scope_value(None) is None
    team = FlowCache(CacheConfig(scope="group"), ("ops", "dev"))
    assert team.scope_value(_who("alice", ("dev", "ops"))) == "ops"  # the flow's order decides
    # a token relay issued for the flow skips the group rule: holding none, it uses no entry
    assert team.scope_value(_who("carol", ("other",))) is None
    assert FlowCache(CacheConfig(scope="public"), ()).scope_value(None) == ""


def _row(flow: str, hits: int, misses: int, revalidated: int = 0) -> CacheRow:
    return CacheRow(flow=flow, hits=hits, misses=misses, revalidated=revalidated, served_bytes=hits * 100,
                    evictions=0, bytes=300, entries=3)


def test_cache_rows_merge_and_render() -> None:
    one, two = Metrics(), Metrics()
    one.set_response_caches([_row("mine", 3, 1)])
    two.set_response_caches([_row("mine", 1, 2, revalidated=1), _row("team", 0, 1)])
    s = samples(render(merge([one.snapshot(), two.snapshot()])))
    lookups = "relay_response_cache_lookups_total"
    assert s[(lookups, labels(flow="mine", result="hit"))] == 4
    assert s[(lookups, labels(flow="mine", result="revalidated"))] == 1
    assert s[(lookups, labels(flow="mine", result="miss"))] == 3
    assert s[("relay_response_cache_hit_ratio", labels(flow="mine"))] == 5 / 8
    assert s[("relay_response_cache_hit_ratio", labels(flow="team"))] == 0
    assert s[("relay_response_cache_bytes", labels(flow="mine"))] == 600
    assert s[("relay_response_cache_served_bytes_total", labels(flow="mine"))] == 400
    assert hit_ratio(_row("idle", 0, 0)) == 0.0
