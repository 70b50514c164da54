"""The balancer's metrics in Prometheus's text format, built when scraped.

prometheus_client is imported here only when a scrape asks for it. Label values are bounded:
status classes, worker states, and one kernel-queue series per listening port and per worker
socket. Not compiled: it runs once per scrape, and what the registry takes as a collector is
a Protocol in current prometheus_client but an ABC to subclass in Debian 12's 0.16, so that
mypyc, which type-checks what it compiles, would refuse this class on one of them (duck
typing serves both at run time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ripsvc.balancer.metrics import CLASSES
from ripsvc.recycle import REASONS

#: The manager's events that count recycled workers, one per reason (rip_worker_recycles).
RECYCLE_EVENTS = tuple(f"recycles_{reason}" for reason in REASONS)

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
                                value=balancer.pool.queued)
        yield GaugeMetricFamily("rip_queue_max", "Queue capacity (503 beyond)",
                                value=balancer.pool.max_queue)
        for name, key, text in (
                ("rip_retries", "retries", "Requests sent to a second worker"),
                ("rip_queue_rejected", "queue_full", "Requests refused with 503: queue full"),
                ("rip_queue_timeouts", "queue_timeout", "Requests answered 504 in the queue"),
                ("rip_worker_hung", "hung", "Workers that did not answer in time"),
                ("rip_worker_restarts", "worker_restarts", "Workers restarted after an exit "
                 "(as reported by the manager)"),
                ("rip_reloads", "reloads", "Rolling restarts (as reported by the manager)"),
                ("rip_pool_rejoins", "pool_rejoins", "Ready workers the manager found missing "
                 "from the pool and joined again"),
                ("rip_pool_strays", "pool_strays", "Workers in the pool the manager does not "
                 "run, taken out"),
                ("rip_access_log_lost", "access_log_lost", "Access-log entries that could "
                 "not be written"),
                ("rip_worker_out_of_rotation", "worker_probing", "Times a worker was taken "
                 "out of rotation until a probe found it idle"),
                ("rip_worker_back", "worker_back", "Times a worker came back after a probe"),
                ("rip_client_gone", "client_gone", "Requests whose client left before "
                 "their answer"),
                ("rip_send_timeouts", "send_timeout", "Clients disconnected for not reading"),
                ("rip_streams_ended", "streams_ended", "Streamed responses ended at "
                 "max_stream_duration"),
                ("rip_spool_errors", "spool_errors", "Bodies that could not be spooled to "
                 "disk"),
                ("rip_descriptors_exhausted", "descriptors_exhausted", "Seconds in which the "
                 "balancer ran out of file descriptors (connections refused)"),
                ("rip_internal_errors", "internal_errors", "Bugs of the balancer's, caught "
                 "and repaired (each is logged)"),
                ("rip_invariant_repairs", "invariant_repairs", "Times the pool's invariants "
                 "were found broken and repaired")):
            yield CounterMetricFamily(name, text, value=stats[key])
        recycles = CounterMetricFamily("rip_worker_recycles", "Workers recycled, by reason: "
                                       "requests, age, reloads or memory (max_rss; as "
                                       "reported by the manager)", labels=["reason"])
        for reason, event in zip(REASONS, RECYCLE_EVENTS, strict=True):
            recycles.add_metric([reason], stats[event])
        yield recycles
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
