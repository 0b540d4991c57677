"""Metadata caches: each entry trusted for a while, at most so many kept, the least recently used going first."""
import collections
import math
import time


class ExpiringCache:
    def __init__(self, ttl: float, max_entries: int, weigh=None):
        """WEIGH(value): how much of MAX_ENTRIES a value takes (one each by default: a listing may take its length)."""
        self.ttl = ttl
        self.max_entries = max_entries
        self._weigh = weigh or (lambda value: 1)
        self._weight = 0
        self._entries: collections.OrderedDict = collections.OrderedDict()  # key -> (expiry, value)

    def get(self, key, default=None):
        """The value, while it is fresh; an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry[0] <= time.monotonic():
            self.pop(key)
            return default
        self._entries.move_to_end(key)
        return entry[1]

    def __contains__(self, key) -> bool:
        sentinel = object()
        return self.get(key, sentinel) is not sentinel

    def put(self, key, value):
        expiry = math.inf if self.ttl == math.inf else time.monotonic() + self.ttl
        self.pop(key)
        self._entries[key] = (expiry, value)
        self._weight += self._weigh(value)
        while self._weight > self.max_entries and len(self._entries) > 1:
            self.pop(next(iter(self._entries)))

    def update(self, key, value):
        """Replaces a fresh entry's value, keeping its expiry; no entry, no change."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            self._weight += self._weigh(value) - self._weigh(entry[1])
            self._entries[key] = (entry[0], value)

    def pop(self, key):
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._weight -= self._weigh(entry[1])

    def pop_where(self, predicate):
        """Drops every entry whose key PREDICATE holds for."""
        for key in [key for key in self._entries if predicate(key)]:
            self.pop(key)

    def __len__(self) -> int:
        return len(self._entries)
