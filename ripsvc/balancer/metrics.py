"""Prometheus metrics of the balancer: counted on the hot path as plain numbers, turned into
the text format only when scraped.

The per-request cost is two list increments and a bisect; prometheus_client (its metric
families and exposition) is used at scrape time only, through a collector, so its locks and
label lookups stay off the request path. Label values are bounded: status classes, worker
states, and one kernel-queue series per listening port and per worker socket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer

#: Seconds; the request latency and queue wait histograms share them. Typed as a tuple of any
#: length: compiled, a fixed-length tuple is a C struct of 15 doubles, boxed into a new Python
#: tuple of new floats at every call of bisect_left (2,600 instructions per request).
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, 60.0)
CLASSES: tuple[str, ...] = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


class Collector:
    """prometheus_client's custom-collector interface over a live balancer."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        balancer = self.balancer
        metrics = balancer.metrics
        stats = balancer.stats
        requests = CounterMetricFamily("rip_requests", "Responses sent, by status class",
                                       labels=["code"])
        for label, count in zip(CLASSES, metrics.by_class, strict=True):
            requests.add_metric([label], count)
        yield requests
        yield HistogramMetricFamily(
            "rip_request_duration_seconds", "Time from a complete request to its response",
            buckets=metrics.latency.cumulative(), sum_value=metrics.latency.sum)
        yield HistogramMetricFamily(
            "rip_queue_wait_seconds", "Time requests waited in the queue for a worker",
            buckets=metrics.queue_wait.cumulative(), sum_value=metrics.queue_wait.sum)
        yield GaugeMetricFamily("rip_queue_depth", "Requests waiting for a worker",
                                value=len(balancer.pool.queue))
        yield GaugeMetricFamily("rip_queue_max", "Queue capacity (503 beyond)",
                                value=balancer.pool.max_queue)
        for name, key, text in (
                ("rip_retries", "retries", "Requests sent to a second worker"),
                ("rip_queue_rejected", "queue_full", "Requests refused with 503: queue full"),
                ("rip_queue_timeouts", "queue_timeout", "Requests answered 504 in the queue"),
                ("rip_worker_hung", "hung", "Workers that did not answer in time"),
                ("rip_worker_restarts", "worker_restarts", "Workers restarted after an exit "
                 "(as reported by the manager)"),
                ("rip_reloads", "reloads", "Rolling restarts (as reported by the manager)")):
            yield CounterMetricFamily(name, text, value=stats[key])
        workers = GaugeMetricFamily("rip_workers", "Workers in the pool, by state",
                                    labels=["state"])
        for state, count in balancer.pool.counts().items():
            if state != "total":
                workers.add_metric([state], count)
        yield workers
        queued = GaugeMetricFamily(
            "rip_kernel_accept_queue", "Connections waiting in the kernel's accept queue",
            labels=["socket"])
        backlog = GaugeMetricFamily("rip_kernel_accept_backlog", "The accept queue's limit",
                                    labels=["socket"])
        for name, queue in balancer.kernel_queues().items():
            queued.add_metric([name], queue.queued)
            backlog.add_metric([name], queue.backlog)
        yield queued
        yield backlog


def render(balancer: Balancer) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(balancer))
    return generate_latest(registry)

