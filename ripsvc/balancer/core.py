"""Dispatch: which worker gets a request, retries, failures and timeouts.

The hot path is callbacks only: a parsed request goes straight to an idle worker's connection,
and the parsed response straight back to the client connection; no task is created unless a
worker connection has to be (re)opened or a request must wait in the queue.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ripsvc import hosts, logs
from ripsvc.balancer.accesslog import AccessLog
from ripsvc.balancer.metrics import Metrics
from ripsvc.balancer.options import BalancerOptions
from ripsvc.balancer.pool import Pool, QueueFull, Slot
from ripsvc.balancer.upstream import Upstream

if TYPE_CHECKING:
    from ripsvc import kernelq
    from ripsvc.balancer.exchange import Exchange, Response
    from ripsvc.balancer.front import ClientConnection

log = logs.get("balancer")

SWEEP_INTERVAL = 0.05


class Balancer:
    def __init__(self, options: BalancerOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.options = options
        self.loop = loop
        self.pool = Pool(options.max_queue)
        self.pool.dispatch = self.send
        self.clients: set[ClientConnection] = set()
        self.ports: list[str] = []
        self.tcp_ports: list[int] = []
        self.started = time.time()
        self.stats: Counter[str] = Counter()
        self.hung: list[str] = []  # worker ids that timed out, for the supervisor
        self.accepting = True
        self.in_flight = 0  # requests being answered, over all client connections
        self.all_answered = asyncio.Event()  # set once stopping and nothing is in flight
        self.access_log = AccessLog(options.app, loop, enabled=options.access_log,
                                    json_format=options.json_logging, stats=self.stats)
        self._sweeper: asyncio.TimerHandle | None = None
        self.metrics = Metrics()
        self._kernel_warned = False
        self.tls_context: ssl.SSLContext | None = None  # set by the server when HTTPS is on
        self.hosts_file = Path(options.hosts_file) if options.hosts_file else None
        self.hosts = hosts.Registry(options.hosts, hosts.load(self.hosts_file)
                                    if self.hosts_file else ())
        #: GET /status and GET /server: answered by the balancer itself.
        self.local_paths = (options.status_path.encode(), options.server_path.encode())
        self.hsts_header = (b"strict-transport-security: max-age=%d\r\n" % options.hsts_max_age
                            if options.hsts else b"")

    def trusts(self, address: str) -> bool:
        """Is `address` one of the proxies whose forwarded headers we keep?"""
        if not self.options.forwarded_allow_ips:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.options.forwarded_allow_ips)

    def client_from_chain(self, chain: bytes) -> bytes | None:
        """The client in a trusted proxy's X-Forwarded-For: the last address that is not one
        of our trusted proxies (the ones before it could be made up by the client)."""
        found = None
        for entry in reversed(chain.split(b",")):
            try:
                ip = ipaddress.ip_address(entry.strip().decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                break
            found = ip
            if not any(ip in net for net in self.options.forwarded_allow_ips):
                break
        if found is None:
            return None
        text = str(found).encode()
        return b"[%s]:0" % text if found.version == 6 else b"%s:0" % text

    # -- workers -----------------------------------------------------------------------------
    def join(self, worker_id: str, path: str, version: str) -> Slot:
        return self.pool.join(Slot(worker_id, path, version))

    # -- requests ----------------------------------------------------------------------------
    def submit(self, exchange: Exchange) -> None:
        """A complete request from a client: to an idle worker, else into the queue."""
        slot = self.pool.acquire()
        if slot is not None:
            self.send(exchange, slot)
            return
        try:
            self.pool.enqueue(exchange)
        except QueueFull:
            self.stats["queue_full"] += 1
            exchange.client.respond_error(exchange, 503, "queue full")
            return
        exchange.waiting = True
        exchange.queue_deadline = self.loop.time() + self.options.queue_timeout
        self.stats["queued"] += 1

    def send(self, exchange: Exchange, slot: Slot) -> None:
        if exchange.waiting:  # from the queue
            self.metrics.queue_wait.observe(
                self.loop.time() - exchange.queue_deadline + self.options.queue_timeout)
        exchange.waiting = False
        exchange.slot = slot
        exchange.worker_id = slot.id
        exchange.attempts += 1
        upstream = slot.upstream
        if upstream is not None and not upstream.closed:
            upstream.send(exchange)
        else:
            self.loop.create_task(self._connect_and_send(exchange, slot))

    async def _connect_and_send(self, exchange: Exchange, slot: Slot) -> None:
        try:
            _, upstream = await asyncio.wait_for(
                self.loop.create_unix_connection(lambda: Upstream(self, slot), slot.path),
                self.options.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self.stats["connect_failures"] += 1
            self.upstream_failed(exchange, slot, False, f"cannot connect to {slot.path}: {exc}")
            return
        slot.upstream = upstream
        if exchange.client.closed and exchange.slot is slot:
            self.pool.release(slot)
            return
        upstream.send(exchange)

    def upstream_done(self, exchange: Exchange, slot: Slot, response: Response) -> None:
        if response.busy:
            # The worker is busy with a request from elsewhere: it did not take this one.
            self.stats["worker_busy"] += 1
            self.pool.release(slot)
            self._retry_or_fail(exchange, 503, "worker busy", replay_ok=True)
            return
        slot.served += 1
        self.stats["answered"] += 1
        self.pool.release(slot)
        if response.streaming:
            exchange.client.stream_end(exchange)
        else:
            exchange.client.respond(exchange, response)

    def upstream_failed(self, exchange: Exchange, slot: Slot, started: bool, why: str) -> None:
        """The connection broke, or never came up; the worker leaves the pool.

        `started`: the request reached the worker, which may have acted on it, so only an
        idempotent request may go to another worker (responses are buffered: no byte of
        this one reached the client unless it was streaming).
        """
        self.pool.fail(slot, why)
        if exchange.client.streaming is exchange:
            exchange.client.abort()  # response bytes already reached the client
            return
        self._retry_or_fail(exchange, 502, why, replay_ok=not started or exchange.idempotent)

    def _retry_or_fail(self, exchange: Exchange, status: int, why: str, replay_ok: bool) -> None:
        if exchange.client.closed:
            return
        if replay_ok and exchange.attempts < 2:
            self.stats["retries"] += 1
            self.submit(exchange)
        else:
            exchange.client.respond_error(exchange, status, why)

    # -- timeouts ------------------------------------------------------------------------------
    def start_sweeper(self) -> None:
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Deadlines are checked here rather than with a timer per request: cheaper."""
        now = self.loop.time()
        self.pool.expire_queue(now)
        for slot in list(self.pool.slots.values()):
            upstream = slot.upstream
            if upstream is not None and upstream.exchange is not None and upstream.deadline < now:
                self._hung(slot, upstream)
        for client in list(self.clients):
            if client.deadline and client.deadline < now:
                client.timed_out()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _hung(self, slot: Slot, upstream: Upstream) -> None:
        exchange = upstream.exchange
        assert exchange is not None
        upstream.exchange = None
        log.error("worker %s did not answer %s %s within %.1f s: reported hung", slot.id,
                  exchange.method, exchange.target.decode("latin-1"),
                  self.options.response_timeout)
        self.hung.append(slot.id)
        self.stats["hung"] += 1
        slot.failed = "hung"
        self.pool.remove(slot, "hung")
        if exchange.client.streaming is exchange:
            exchange.client.abort()
        else:
            exchange.client.respond_error(exchange, 504, "worker response timeout")

    def exchange_done(self) -> None:
        self.in_flight -= 1
        if not self.accepting and self.in_flight == 0:
            self.all_answered.set()

    def begin_stop(self) -> None:
        """No new requests: idle connections close, busy ones after their response."""
        self.accepting = False
        for client in list(self.clients):
            client.close_if_idle()
        if self.in_flight == 0:
            self.all_answered.set()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- views -------------------------------------------------------------------------------
    def kernel_queues(self) -> dict[str, kernelq.Queue]:
        """The kernel's accept queue of each listening port and each worker's socket, read
        with sock_diag; none if the kernel does not let us (logged once). pyroute2 is imported
        on the first call (≈ 20 MB): a balancer nobody asks about does without it."""
        from ripsvc import kernelq

        ports = self.tcp_ports
        slots = list(self.pool.slots.values())
        try:
            by_port = kernelq.tcp_listen_queues(ports)
            by_path = kernelq.unix_listen_queues([slot.path for slot in slots])
        except kernelq.KernelQueueError as exc:
            if not self._kernel_warned:
                log.warning("kernel accept queues unavailable: %s", exc)
                self._kernel_warned = True
            return {}
        found = {f"port:{port}": queue for port, queue in sorted(by_port.items())}
        for slot in slots:
            if slot.path in by_path:
                found[f"worker:{slot.id}"] = by_path[slot.path]
        return found

    def status(self) -> dict[str, object]:
        from ripsvc import __version__

        return {
            "status": "healthy" if self.pool.serving else "degraded",
            "app": self.options.app,
            "workers": self.pool.counts(),
            "queue": {"depth": len(self.pool.queue), "max": self.pool.max_queue},
            "ports": self.ports,
            "uptime": round(time.time() - self.started, 3),
            "version": __version__,
        }
