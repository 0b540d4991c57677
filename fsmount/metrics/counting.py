"""Histograms and FuseRequests: counts kept as plain numbers on the event loop, cheap enough for every FUSE request.

prometheus-client's own Histogram takes a lock and searches its buckets linearly at every observation; these
are plain numbers only the loop touches. The exporter (fsmount/metrics/exporter.py) reads them at scrape time.
"""
import bisect
import errno
import math
from collections.abc import Iterator

from prometheus_client.utils import floatToGoString

# Seconds: a FUSE request answered from memory takes tens of microseconds, one that waits on a store up to its retries.
FUSE_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STORE_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Histograms:
    """Observations of durations, one histogram per tuple of label values."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = (*bounds, math.inf)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, labels: tuple[str, ...], seconds: float):
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * len(self.bounds)
            self._sums[labels] = 0.0
        counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._sums[labels] += seconds

    def items(self) -> Iterator[tuple[tuple[str, ...], list[tuple[str, int]], float]]:
        """(labels, cumulative buckets as the text format has them, sum) of each histogram. From any thread: what the
        loop adds meanwhile shows at the next scrape."""
        for labels, counts in self._counts.copy().items():
            total, buckets = 0, []
            for bound, count in zip(self.bounds, counts.copy()):
                total += count
                buckets.append((floatToGoString(bound), total))
            yield labels, buckets, self._sums.get(labels, 0.0)


class FuseRequests:
    """The FUSE requests answered, by operation, their durations, and the errors replied, by operation and errno."""

    def __init__(self):
        self.durations = Histograms(FUSE_BOUNDS)
        self.errors: dict[tuple[str, str], int] = {}

    def record(self, op: str, seconds: float, error: int):
        """ERROR: the errno replied, 0 for none."""
        self.durations.observe((op,), seconds)
        if error:
            labels = (op, errno.errorcode.get(error, str(error)))
            self.errors[labels] = self.errors.get(labels, 0) + 1
