"""TokenCache, the verified-token cache: its contract on both implementations, CLOCK
eviction step by step, and a differential property test holding the two to each other."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import _fastpath_py
from support.impls import COMPILED, NOT_BUILT




class Who:
    """Stands in for an Identity: the cache never looks inside what it stores."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_hit_returns_the_stored_identity(impl: ModuleType) -> None:
    cache = impl.TokenCache(8)
    alice = Who("alice")
    cache.put(b"token-a", 3, alice, 1000.0)
    assert cache.get(b"token-a", 3, 999.0) is alice
    assert cache.get(bytes(bytearray(b"token-a")), 3, 1000.0) is alice  # equal bytes; expiry inclusive
    assert cache.stats() == {"size": 1, "capacity": 8, "hits": 2, "misses": 0, "evictions": 0}


def test_misses(impl: ModuleType) -> None:
    cache = impl.TokenCache(8)
    cache.put(b"token-a", 3, Who("alice"), 1000.0)
    assert cache.get(b"token-b", 3, 0.0) is None  # never stored
    assert cache.get(b"token-a", 4, 0.0) is None  # the keys changed since it was verified
    assert cache.get(b"token-a", 2, 0.0) is None
    assert cache.get(b"token-a", 3, 1000.001) is None  # expired
    assert cache.get(b"token-a"[:-1], 3, 0.0) is None
    assert cache.stats()["misses"] == 5 and cache.stats()["hits"] == 0


def test_put_again_replaces_the_entry_in_place(impl: ModuleType) -> None:
    cache = impl.TokenCache(2)
    cache.put(b"t", 1, Who("old"), 10.0)
    bob = Who("bob")
    cache.put(b"t", 2, bob, 20.0)
    assert cache.get(b"t", 1, 0.0) is None
    assert cache.get(b"t", 2, 15.0) is bob
    assert cache.stats()["size"] == 1


def test_clock_eviction_gives_recently_hit_tokens_a_second_chance(impl: ModuleType) -> None:
    cache = impl.TokenCache(3)
    who = {name: Who(name) for name in "abcde"}
    for name in "abc":
        cache.put(name.encode(), 0, who[name], 1e9)
    # every entry is marked as used when stored: the hand clears a, b, c, comes back to a
    cache.put(b"d", 0, who["d"], 1e9)
    assert cache.get(b"a", 0, 0.0) is None
    assert cache.get(b"b", 0, 0.0) is who["b"]  # b is used again, c is not
    cache.put(b"e", 0, who["e"], 1e9)  # the hand passes b (second chance) and takes c
    assert cache.get(b"c", 0, 0.0) is None
    assert [cache.get(n, 0, 0.0) is who[n.decode()] for n in (b"b", b"d", b"e")] == [True, True, True]
    assert cache.stats() == {"size": 3, "capacity": 3, "hits": 4, "misses": 2, "evictions": 2}


def test_a_full_cache_stays_at_capacity(impl: ModuleType) -> None:
    cache = impl.TokenCache(100)
    for i in range(1000):
        cache.put(b"token-%d" % i, 0, Who(str(i)), 1e9)
    stats = cache.stats()
    assert (stats["size"], stats["evictions"]) == (100, 900)
    assert cache.get(b"token-999", 0, 0.0) is not None


def test_purge_forgets_everything_but_the_counters(impl: ModuleType) -> None:
    cache = impl.TokenCache(2)
    cache.put(b"a", 0, Who("a"), 1e9)
    assert cache.get(b"a", 0, 0.0) is not None
    cache.purge()
    assert cache.get(b"a", 0, 0.0) is None
    assert cache.stats() == {"size": 0, "capacity": 2, "hits": 1, "misses": 1, "evictions": 0}
    cache.put(b"b", 0, Who("b"), 1e9)
    cache.put(b"c", 0, Who("c"), 1e9)
    cache.put(b"d", 0, Who("d"), 1e9)
    assert cache.stats()["size"] == 2


def test_capacity_must_be_positive(impl: ModuleType) -> None:
    for capacity in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            impl.TokenCache(capacity)


def test_tokens_are_bytes(impl: ModuleType) -> None:
    cache = impl.TokenCache(2)
    with pytest.raises(TypeError):
        cache.get(bytearray(b"a"), 0, 0.0)


# -- the two implementations agree -------------------------------------------------------------

TOKENS = [b"t%d" % i for i in range(12)]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(TOKENS), st.integers(0, 2), st.integers(0, 40)),
        st.tuples(st.just("get"), st.sampled_from(TOKENS), st.integers(0, 2), st.integers(0, 40)),
        st.tuples(st.just("purge"), st.just(b""), st.just(0), st.just(0)),
    ),
    max_size=200,
)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 8), ops=OPS)
def test_compiled_and_twin_agree(capacity: int, ops: list[tuple[str, bytes, int, int]]) -> None:
    assert COMPILED is not None
    caches = [_fastpath_py.TokenCache(capacity), COMPILED.TokenCache(capacity)]
    identities: dict[bytes, Any] = {t: Who(t.decode()) for t in TOKENS}
    for op, token, generation, moment in ops:
        if op == "put":
            for cache in caches:
                cache.put(token, generation, identities[token], float(moment))
        elif op == "get":
            twin, compiled = (cache.get(token, generation, float(moment) - 0.5) for cache in caches)
            assert twin is compiled
        else:
            for cache in caches:
                cache.purge()
        assert caches[0].stats() == caches[1].stats()
