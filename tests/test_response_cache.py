"""The response cache's rules: what Cache-Control allows, and the per-flow LRU store."""

from __future__ import annotations

import pytest

from relay.cache_control import Directives, lifetime, parse_cache_control, storable
from relay.response_cache import Entry, Intake, ResponseCache


def _no_headers(name: str) -> bytes:
    return b""


def _entry(body: bytes, subject: str = "alice", fresh_for: float = 30.0) -> Entry:
    return Entry(status=200, headers=b"", body=body, stored_at=0.0, fresh_for=fresh_for, subject=subject)


def test_parse_cache_control_reads_every_line_and_ignores_case() -> None:
    cc = parse_cache_control([b"Public, MAX-AGE=60", b's-maxage="10", no-cache'])
    assert cc == Directives(no_cache=True, public=True, max_age=60, s_maxage=10)


def test_a_malformed_age_is_stale_at_once() -> None:
    assert parse_cache_control([b"max-age=soon"]).max_age == 0


@pytest.mark.parametrize(
    ("status", "header", "scope", "cookie", "vary", "expected"),
    [
        (200, b"", "subject", False, [], True),
        (200, b"no-store", "subject", False, [], False),
        (200, b"private", "subject", False, [], True),
        (200, b"private", "public", False, [], False),
        (200, b"private", "group", False, [], False),
        (200, b"", "public", True, [], False),
        (200, b"", "subject", True, [], True),
        (200, b"", "subject", False, ["*"], False),
        (404, b"", "subject", False, [], False),
        (404, b"max-age=5", "subject", False, [], True),
        (500, b"max-age=5", "subject", False, [], False),
        # varying on the identity relay sends: a subject's own entry at most
        (200, b"", "public", False, ["x-relay-subject"], False),
        (200, b"", "group", False, ["accept", "x-relay-subject"], False),
        (200, b"", "subject", False, ["x-relay-subject", "x-relay-issuer"], True),
        (200, b"", "subject", False, ["x-relay-groups"], False),
        (200, b"", "subject", False, ["x-relay-request-id"], False),
    ],
)
def test_storable(status: int, header: bytes, scope: str, cookie: bool, vary: list[str], expected: bool) -> None:
    assert storable(status, parse_cache_control([header]), scope, cookie, vary) is expected  # type: ignore[arg-type]


def test_lifetime_ttl_is_the_default_and_the_cap() -> None:
    assert lifetime(parse_cache_control([]), "subject", 30.0) == 30.0
    assert lifetime(parse_cache_control([b"max-age=5"]), "subject", 30.0) == 5.0
    assert lifetime(parse_cache_control([b"max-age=500"]), "subject", 30.0) == 30.0
    assert lifetime(parse_cache_control([b"no-cache, max-age=5"]), "subject", 30.0) == 0.0


def test_s_maxage_wins_only_for_shared_scopes() -> None:
    cc = parse_cache_control([b"max-age=20, s-maxage=3"])
    assert lifetime(cc, "group", 30.0) == 3.0
    assert lifetime(cc, "public", 30.0) == 3.0
    assert lifetime(cc, "subject", 30.0) == 20.0


def test_scopes_never_meet() -> None:
    cache = ResponseCache(1024, 512)
    cache.store("iss alice", b"/r", (), _no_headers, _entry(b"alice's"))
    assert cache.lookup("iss bob", b"/r", _no_headers, 0.0) is None
    hit = cache.lookup("iss alice", b"/r", _no_headers, 0.0)
    assert hit is not None and hit.body == b"alice's"


def test_a_stale_entry_without_a_validator_is_dropped() -> None:
    cache = ResponseCache(1024, 512)
    cache.store("s", b"/r", (), _no_headers, _entry(b"old", fresh_for=5.0))
    assert cache.lookup("s", b"/r", _no_headers, 5.0) is None
    assert len(cache) == 0 and cache.bytes == 0


def test_a_stale_entry_with_a_validator_stays_to_be_revalidated() -> None:
    cache = ResponseCache(1024, 512)
    tagged = Entry(200, b"ETag: \"v1\"\r\n", b"old", 0.0, 5.0, etag=b'"v1"')
    cache.store("s", b"/r", (), _no_headers, tagged)
    stale = cache.lookup("s", b"/r", _no_headers, 5.0)
    assert stale is tagged and not stale.fresh(5.0)
    cache.forget("s", b"/r", _no_headers)
    assert cache.lookup("s", b"/r", _no_headers, 5.0) is None and cache.bytes == 0


def test_counters_outlive_the_store() -> None:
    first = ResponseCache(250, 100)
    for name in (b"/a", b"/b", b"/c"):
        first.store("s", name, (), _no_headers, _entry(b"x" * 100))
    again = ResponseCache(250, 100, first.counters)
    again.store("s", b"/a", (), _no_headers, _entry(b"x" * 100))
    assert again.counters.evictions == 1 and len(again) == 1


def test_vary_keys_on_the_named_request_headers() -> None:
    cache = ResponseCache(1024, 512)
    english = {"accept-language": b"en"}.get
    cache.store("", b"/r", ("Accept-Language",), lambda n: english(n, b""), _entry(b"hello"))
    assert cache.lookup("", b"/r", lambda n: b"fr" if n == "accept-language" else b"", 0.0) is None
    assert cache.lookup("", b"/r", lambda n: english(n, b""), 0.0) is not None


def test_an_entry_stored_under_one_vary_is_not_found_under_another() -> None:
    cache = ResponseCache(1024, 512)
    cache.store("", b"/r", ("X-Team",), lambda n: b"k" if n == "x-team" else b"", _entry(b"team k"))
    cache.store("", b"/r", ("X-Locale",), lambda n: b"z" if n == "x-locale" else b"", _entry(b"locale z"))
    # the same value under another name: the names are part of the key
    assert cache.lookup("", b"/r", lambda n: b"k" if n == "x-locale" else b"", 0.0) is None


def test_least_recently_used_goes_first_under_max_bytes() -> None:
    cache = ResponseCache(250, 100)
    for name in (b"/a", b"/b"):
        cache.store("s", name, (), _no_headers, _entry(b"x" * 100))
    cache.lookup("s", b"/a", _no_headers, 0.0)  # /a is now the most recent
    cache.store("s", b"/c", (), _no_headers, _entry(b"x" * 100))
    assert cache.lookup("s", b"/b", _no_headers, 0.0) is None
    assert cache.lookup("s", b"/a", _no_headers, 0.0) is not None
    assert cache.bytes == 200 and cache.counters.evictions == 1


def test_an_entry_over_the_limit_is_not_kept() -> None:
    cache = ResponseCache(1000, 100)
    assert not cache.store("s", b"/big", (), _no_headers, _entry(b"x" * 101))
    assert len(cache) == 0 and cache.bytes == 0


def test_purge_by_subject_and_whole() -> None:
    cache = ResponseCache(1000, 100)
    cache.store("iss alice", b"/r", (), _no_headers, _entry(b"a", "alice"))
    cache.store("iss bob", b"/r", (), _no_headers, _entry(b"b", "bob"))
    assert cache.purge("alice") == 1
    assert cache.lookup("iss alice", b"/r", _no_headers, 0.0) is None
    assert cache.lookup("iss bob", b"/r", _no_headers, 0.0) is not None
    assert cache.purge() == 1 and cache.bytes == 0


def test_intake_gives_up_past_its_limit_and_holds_nothing() -> None:
    intake = Intake(limit=10)
    intake.add(b"x" * 6)
    assert intake.body() == b"x" * 6
    intake.add(b"x" * 6)
    assert intake.overflowed and intake.pieces == [] and intake.body() is None
    intake.add(b"more")
    assert intake.held == 12


def test_freshness_follows_age() -> None:
    entry = _entry(b"x", fresh_for=5.0)
    assert entry.fresh(4.9) and not entry.fresh(5.0)
    assert entry.age(-1.0) == 0.0
