"""Prometheus metrics of the balancer, counted on the hot path as plain numbers.

The per-request cost is two list increments and a bisect (this module is compiled); they are
turned into Prometheus's text format only when scraped (exposition.py), so prometheus_client's
locks and label lookups stay off the request path.
"""

from __future__ import annotations

from bisect import bisect_left

#: Seconds; the request latency and queue wait histograms share them. Typed as a tuple of any
#: length: compiled, a fixed-length tuple is a C struct of 15 doubles, boxed into a new Python
#: tuple of new floats at every call of bisect_left (2,600 instructions per request).
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, 60.0)
CLASSES: tuple[str, ...] = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        rows = []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            total += count
            rows.append((bound, float(total)))
        return rows


class Metrics:
    """What the balancer counts for Prometheus (besides its `stats` counters)."""

    def __init__(self) -> None:
        self.by_class = [0] * len(CLASSES)
        self.latency = Histogram()
        self.queue_wait = Histogram()

    def request(self, status: int, seconds: float) -> None:
        """A response went out (hot path)."""
        self.by_class[status // 100 if 100 <= status < 600 else 0] += 1
        self.latency.observe(seconds)
