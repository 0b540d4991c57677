"""The bounded, expiring metadata cache (no server needed)."""
import math
import time

import pytest

from fsmount.cache.metadata import ExpiringCache

pytestmark = pytest.mark.unit


def test_entries_expire():
    cache = ExpiringCache(0.05, 10)
    cache.put("a", None)
    assert "a" in cache and cache.get("a", "missing") is None
    time.sleep(0.06)
    assert "a" not in cache and cache.get("a", "missing") == "missing"
    assert len(cache) == 0


def test_the_least_recently_used_goes_first_at_the_bound():
    cache = ExpiringCache(math.inf, 3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("d", "D")
    assert [key for key in "abcd" if key in cache] == ["a", "c", "d"]
    assert len(cache) == 3


def test_pop_of_a_missing_key_is_harmless():
    cache = ExpiringCache(1.0, 3)
    cache.pop("nothing")
    cache.put("k", 1)
    cache.pop("k")
    assert "k" not in cache


def test_weighed_entries_keep_their_sum_within_the_bound():
    cache = ExpiringCache(math.inf, 10, weigh=len)
    cache.put("a", [1] * 4)
    cache.put("b", [1] * 4)
    cache.put("a", [1] * 5)  # replaced, not counted twice: 9, and b is now the least recently used
    cache.put("c", [1] * 3)  # 12 > 10: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.put("huge", [1] * 20)  # more than the bound alone: kept, the rest go
    assert [key for key in ("a", "c", "huge") if key in cache] == ["huge"]
