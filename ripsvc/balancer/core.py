"""The balancer's core: which worker gets a request, what a response or a failure means for the
exchange and the worker, timeouts, and the pool's rule.

Everything flows through here one way: client connections (client.py) hand complete requests
to `submit`; worker connections (upstream.py) report responses and failures; the pool
(pool.py) only keeps state. This module does no I/O and reads no clock of its own: it is given
a clock, a network that opens worker connections, and an access log, so that tests drive it
with bytes and time alone (tests/test_balancer_machine.py). `tick` is called by the sweeper
every SWEEP_INTERVAL; one failing step of it is reported and repaired, never a dead timer.

The rule (SPEC §8): a worker leaves the pool only when it is removed (drained, its process
gone). A broken or failed response, a timeout, a refused connection or a client that left
mid-request ends that one worker connection; the slot goes to PROBING and comes back once a
probe on a fresh connection finds the worker idle.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ripsvc import hosts, logs
from ripsvc.balancer.exchange import DONE, FLUSHING, QUEUED, STREAMING, WAITING
from ripsvc.balancer.metrics import Metrics
from ripsvc.balancer.options import BalancerOptions
from ripsvc.balancer.pool import (
    BUSY,
    DRAINED,
    DRAINING,
    PROBE_MAX,
    PROBING,
    READY,
    Pool,
    QueueFull,
    Slot,
    WebSocketSlot,
)
from ripsvc.balancer.tunnel import HANDSHAKE, Tunnel
from ripsvc.balancer.upstream import CLOSED, IDLE, Upstream

if TYPE_CHECKING:
    from ripsvc import kernelq
    from ripsvc.balancer.client import Client
    from ripsvc.balancer.exchange import Exchange

log = logs.get("balancer")

SWEEP_INTERVAL = 0.05
#: The pool's invariants are checked (and repaired) this often.
CHECK_INTERVAL = 1.0
#: A probe that gets no answer within this long is given up (the next one backs off).
PROBE_TIMEOUT = 2.0
#: Internal errors and full disks are logged at most this often (each kind), counted always.
REPORT_INTERVAL = 10.0


class Connecting(Protocol):
    """A worker connection being opened (Upstream, Tunnel)."""

    state: int

    def connect_failed(self, why: str) -> None: ...


class Network(Protocol):
    """How the core reaches a worker: open a connection to `path` for `protocol`, which then
    gets connection_made, or connect_failed (refused, no such socket, timed out); and hand a
    client's socket over to the WebSocket worker at `path` (handoff.py), where it can."""

    def connect(self, path: str, protocol: Connecting) -> None: ...

    def websocket_worker(self, path: str) -> None: ...

    def hand_over(self, path: str, transport: Any, head: bytes) -> bool: ...


class AccessSink(Protocol):
    """Where answered requests are recorded (accesslog.AccessLog)."""

    def record(self, exchange: Exchange, status: int, sent: int, seconds: float) -> None: ...


class Balancer:
    def __init__(self, options: BalancerOptions, clock: Callable[[], float], network: Network,
                 access_log: AccessSink) -> None:
        self.options = options
        self.clock = clock
        self.network = network
        self.access_log = access_log
        self.pool = Pool(options.max_queue)
        self.clients: set[Client] = set()
        self.tunnels: set[Tunnel] = set()  # WebSockets, from their request to their end
        self.ports: list[str] = []
        self.tcp_ports: list[int] = []
        self.started = time.time()
        self.stats: Counter[str] = Counter()
        self.hung: list[str] = []  # worker ids that timed out, for the manager
        self.accepting = True
        self.metrics = Metrics()
        self._kernel_warned = False
        self._reported: dict[str, float] = {}
        self._checked = 0.0
        #: The wall clock minus the balancer's (monotonic) clock: what a time of the balancer's
        #: is in seconds since the epoch, without a second clock read per request (X-Request-
        #: Start). Brought up to date every CHECK_INTERVAL, so it follows the wall clock.
        self.wall_offset = time.time() - clock()
        self.tls_context: ssl.SSLContext | None = None  # set by the server when HTTPS is on
        self.hosts_file = Path(options.hosts_file) if options.hosts_file else None
        self.hosts = hosts.Registry(options.hosts, hosts.load(self.hosts_file)
                                    if self.hosts_file else ())
        #: GET /status, /server (liveness) and /ready: answered by the balancer itself.
        self.local_paths = (options.status_path.encode(), options.server_path.encode(),
                            options.ready_path.encode())
        #: Why readiness fails while requests are still served ("" when it does not): the
        #: manager drained the app (ripctl drain), or a stop waits out shutdown_delay.
        self.draining = ""
        #: The manager's word on the app when it is not healthy ("degraded: 2/3 workers, the
        #: app on disk fails to load: …"), for /status; "" when healthy or never said.
        self.app_health = ""
        self.draining_since = 0.0  # its clock() time
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
    def join_websocket(self, worker_id: str, path: str, version: str,
                       capacity: int) -> WebSocketSlot:
        """A ready WebSocket worker; the same id and socket again keeps its slot."""
        websockets = self.pool.websockets
        slot = websockets.get(worker_id)
        if slot is None or slot.path != path:
            slot = websockets[worker_id] = WebSocketSlot(worker_id, path, version, capacity)
            log.info("WebSocket worker %s joined (%s, version %s, up to %d)", worker_id, path,
                     version or "-", capacity)
        slot.version, slot.capacity, slot.draining = version or slot.version, capacity, False
        self.network.websocket_worker(path)
        return slot

    def join(self, worker_id: str, path: str, version: str) -> Slot:
        """A ready worker. The same id and socket again (the manager re-joins a restarted
        worker) keeps the slot, and a slot in PROBING is probed at once."""
        slot, replaced = self.pool.join(Slot(worker_id, path, version))
        if replaced is not None:
            self._remove(replaced, "replaced")
        now = self.clock()
        if slot.state == PROBING and slot.probe_at:
            self._probe(slot, now)
        elif slot.state == READY and self.pool.queued:  # requests waited for a worker
            self.pool.acquire_this(slot, now)
            self._slot_free(slot, now, "")
        return slot

    def leave(self, slot: Slot | WebSocketSlot, why: str) -> None:
        """Out of the pool at once (the manager drains it first to let its request finish).
        A WebSocket worker's WebSockets go on until they end (its own close them in time)."""
        if isinstance(slot, WebSocketSlot):
            if self.pool.websockets.get(slot.id) is slot:
                del self.pool.websockets[slot.id]
            return
        self._remove(slot, why)

    def drain(self, slot: Slot | WebSocketSlot, drained: Callable[[], None]) -> None:
        """No new requests for `slot`; `drained` is called once its request in flight (if
        any) is done. A WebSocket worker takes no new WebSockets, drained at once: those it
        has end on their own, or when it stops (1001 after its graceful_timeout)."""
        if isinstance(slot, WebSocketSlot):
            slot.draining = True
            drained()
            return
        self.pool.drain(slot, self.clock())
        if slot.state == DRAINING:
            slot.drained.append(drained)
            return
        self._close_upstream(slot)  # DRAINED, or GONE: nothing will be sent to it
        drained()

    def _remove(self, slot: Slot, why: str) -> None:
        exchange = slot.exchange
        if exchange is not None and slot.state in (BUSY, DRAINING):
            exchange.slot = None
            self._close_upstream(slot)
            self._failed(exchange, f"worker {slot.id} was removed ({why})", True)
        self._close_upstream(slot)
        self.pool.remove(slot, why, self.clock())
        self._settle_drain(slot)

    @staticmethod
    def _close_upstream(slot: Slot) -> None:
        upstream = slot.upstream
        slot.upstream = None
        if upstream is not None:
            upstream.close()

    @staticmethod
    def _settle_drain(slot: Slot) -> None:
        callbacks, slot.drained = slot.drained, []
        for callback in callbacks:
            callback()

    # -- requests ----------------------------------------------------------------------------
    def submit(self, exchange: Exchange) -> None:
        """A request its connection took up (or one to retry): to an idle worker, else into
        the queue."""
        now = self.clock()
        slot = self.pool.acquire(now)
        if slot is not None:
            self._send(exchange, slot, now)
            return
        try:
            self.pool.enqueue(exchange)
        except QueueFull:
            self.stats["queue_full"] += 1
            exchange.client.answer_error(exchange, 503, "queue full")
            return
        exchange.move(QUEUED)
        exchange.queued = now
        exchange.queue_deadline = now + self.options.queue_timeout
        self.stats["queued"] += 1

    def _send(self, exchange: Exchange, slot: Slot, now: float) -> None:
        if exchange.state == QUEUED and exchange.attempts == 0:
            self.metrics.queue_wait.observe(now - exchange.queued)
        exchange.move(WAITING)
        exchange.slot = slot
        slot.exchange = exchange
        exchange.worker_id = slot.id
        exchange.attempts += 1
        exchange.dispatched = now
        exchange.worker_busy = False
        upstream = slot.upstream
        if upstream is None:
            upstream = self._connect(slot)
        upstream.send(exchange)

    def _connect(self, slot: Slot) -> Upstream:
        upstream = Upstream(self, slot)
        slot.upstream = upstream
        self.network.connect(slot.path, upstream)
        return upstream

    def _slot_free(self, slot: Slot, now: float, trouble: str) -> None:
        """`slot` (BUSY, DRAINING or PROBING) has no request any more: it takes the longest
        waiting one, or idles, or goes to PROBING (`trouble`), or is DRAINED."""
        slot.exchange = None
        state = slot.state
        if state == DRAINING:
            slot.move(DRAINED, now)
            self._close_upstream(slot)
            self._settle_drain(slot)
            return
        if state != BUSY and state != PROBING:
            return  # GONE meanwhile
        if trouble:
            self._close_upstream(slot)
            if state == BUSY:
                self._to_probing(slot, trouble, now)
            return
        waiting = self.pool.next_queued()
        if waiting is None:
            self.pool.set_idle(slot, now)
            return
        if state == PROBING:
            slot.move(BUSY, now)
        self._send(waiting, slot, now)

    def _to_probing(self, slot: Slot, why: str, now: float) -> None:
        log.warning("worker %s is out of rotation until it answers a probe: %s", slot.id, why)
        self.stats["worker_probing"] += 1
        self.pool.to_probing(slot, why, now)

    # -- responses (called by the worker connections) ------------------------------------------
    def response_head(self, upstream: Upstream, exchange: Exchange, status: int, head: bytes,
                      fields: list[tuple[bytes, bytes]] | None) -> None:
        if fields is not None and status == 503:
            for name, _value in fields:
                if name == b"rip-worker-busy":
                    exchange.worker_busy = True  # not taken: its body is dropped, then a retry
                    return
        if exchange.state != WAITING:
            return
        exchange.move(STREAMING)
        # Its silence is timed from here, which response_read says when it is not over at
        # the end of this read (the common response ends in it: no clock read for it).
        exchange.last_byte = exchange.dispatched
        exchange.client.response_head(exchange, status, head, fields)

    def response_body(self, exchange: Exchange, chunk: bytes) -> None:
        if exchange.state == STREAMING:
            exchange.client.response_body(exchange, chunk)

    def response_read(self, exchange: Exchange) -> None:
        """A read from the worker ended mid-response: what it brought goes to the client."""
        if exchange.state == STREAMING:
            exchange.last_byte = self.clock()
            exchange.client.flush()

    def response_complete(self, upstream: Upstream, exchange: Exchange, reusable: bool,
                          extra: bool) -> None:
        slot = upstream.slot
        if slot.upstream is upstream and not reusable:
            slot.upstream = None
        if exchange.slot is not slot:
            return  # given up meanwhile (the client left, a timeout): nothing to answer
        exchange.slot = None
        now = exchange.answered = self.clock()
        trouble = "the worker sent more than its response" if extra else ""
        if exchange.worker_busy:
            # Busy with a request from elsewhere (its own socket, a stale connection of
            # ours): it did not take this one, which may go to another worker.
            self.stats["worker_busy"] += 1
            self._slot_free(slot, now, trouble or "the worker said it was busy")
            self._retry_or_fail(exchange, 503, "worker busy", True)
            return
        slot.served += 1
        self.stats["answered"] += 1
        self._slot_free(slot, now, trouble)
        if exchange.state == STREAMING:
            exchange.move(FLUSHING)
            exchange.client.response_end(exchange)

    def upstream_lost(self, upstream: Upstream, exchange: Exchange | None, why: str,
                      started: bool) -> None:
        """A worker connection broke, or never came up. `started`: the request reached the
        worker, which may have acted on it."""
        slot = upstream.slot
        if slot.upstream is upstream:
            slot.upstream = None
        now = self.clock()
        if exchange is None:
            if slot.state == PROBING and not slot.probe_at:
                self._probe_later(slot, now, why)
            return
        if exchange.slot is not slot:
            return  # given up meanwhile
        exchange.slot = None
        if not started:
            self.stats["connect_failures"] += 1
        self._slot_free(slot, now, why)
        self._failed(exchange, why, started)

    def upstream_closed(self, upstream: Upstream) -> None:
        """A keep-alive connection with nothing on it, ended by the worker (it is stopping,
        or recycling): the next request opens a fresh one."""
        if upstream.slot.upstream is upstream:
            upstream.slot.upstream = None

    def _failed(self, exchange: Exchange, why: str, started: bool) -> None:
        """`exchange` lost its worker: retried when nothing can have happened twice, else 502
        (or, with response bytes already at the client, its connection is cut)."""
        if exchange.state == STREAMING:
            exchange.client.broken(exchange, why)
        elif exchange.state == WAITING:
            self._retry_or_fail(exchange, 502, why, not started or exchange.idempotent)

    def _retry_or_fail(self, exchange: Exchange, status: int, why: str, replay_ok: bool) -> None:
        if replay_ok and exchange.attempts < 2:
            self.stats["retries"] += 1
            self.submit(exchange)
        else:
            exchange.client.answer_error(exchange, status, why)

    def hold_worker(self, exchange: Exchange, hold: bool) -> None:
        """An unspooled response (X-Accel-Buffering: no, or a spool at its limit) follows
        its client's pace: reading from the worker stops while the client does not read."""
        slot = exchange.slot
        upstream = slot.upstream if slot is not None else None
        if upstream is not None and upstream.state != CLOSED:
            if hold:
                upstream.transport.pause_reading()
            else:
                upstream.transport.resume_reading()

    # -- WebSockets ------------------------------------------------------------------------------
    def open_tunnel(self, exchange: Exchange) -> None:
        """A WebSocket: to the least busy WebSocket worker, on a connection of its own."""
        slot = self.pool.pick_websocket()
        if slot is None:
            self.stats["websocket_refused"] += 1
            exchange.client.answer_error(exchange, 503, "no WebSocket worker can take more")
            return
        exchange.worker_id = slot.id
        client = exchange.client
        if client.can_hand_over and self.network.hand_over(slot.path, client.transport,
                                                           exchange.head):
            slot.open += 1
            slot.opened += 1
            self.stats["websockets"] += 1
            self.stats["websockets_handed_over"] += 1
            client.handed_over(exchange)
            return
        exchange.move(WAITING)
        exchange.dispatched = self.clock()
        exchange.attempts = 1
        slot.open += 1
        slot.opened += 1
        tunnel = exchange.tunnel = Tunnel(self, slot, exchange)
        self.tunnels.add(tunnel)
        self.network.connect(slot.path, tunnel)

    def handed_over_ended(self, path: str, count: int) -> None:
        """`count` WebSockets handed over to the worker at `path` ended (handoff.py)."""
        for slot in self.pool.websockets.values():
            if slot.path == path:
                slot.open = max(0, slot.open - count)

    def tunnel_answered(self, tunnel: Tunnel, status: int, head: bytes, rest: bytes) -> None:
        exchange = tunnel.exchange
        if exchange.state != WAITING:
            return
        exchange.move(STREAMING)
        exchange.status = status
        if status == 101:
            self.stats["websockets"] += 1
        exchange.client.upgraded(exchange, tunnel, head, rest)

    def tunnel_ended(self, tunnel: Tunnel, why: str, started: bool,
                     status: int = 502) -> None:
        """A WebSocket's worker connection ended, or never came up: its client's ends too."""
        if tunnel not in self.tunnels:
            return
        self.tunnels.discard(tunnel)
        tunnel.slot.open -= 1
        exchange = tunnel.exchange
        exchange.tunnel = None
        if exchange.state == WAITING:
            if not started:
                self.stats["connect_failures"] += 1
            exchange.client.answer_error(exchange, status, why)
        elif exchange.state == STREAMING:
            exchange.client.tunnel_ended(exchange, why)

    # -- probes ----------------------------------------------------------------------------------
    def _probe(self, slot: Slot, now: float) -> None:
        slot.probe_at = 0.0  # under way
        slot.probe_sent = now
        upstream = slot.upstream
        if upstream is not None and upstream.state != IDLE:
            self._close_upstream(slot)
            upstream = None
        if upstream is None:
            upstream = self._connect(slot)
        upstream.send_probe()

    def _probe_later(self, slot: Slot, now: float, why: str) -> None:
        slot.probe_delay = min(PROBE_MAX, slot.probe_delay * 2)
        slot.probe_at = now + slot.probe_delay
        if why and not slot.reason.endswith(why):
            slot.reason = f"{slot.reason.partition(';')[0]}; probe: {why}"

    def probe_answered(self, upstream: Upstream, status: int, reusable: bool) -> None:
        slot = upstream.slot
        if slot.upstream is upstream and not reusable:
            slot.upstream = None
        if slot.state != PROBING or slot.probe_at:
            if slot.upstream is upstream:
                self._close_upstream(slot)
            return
        now = self.clock()
        if status != 204:
            self._probe_later(slot, now, "busy" if status == 503 else f"answered {status}")
            return
        log.info("worker %s is back in rotation (out %.1f s: %s)", slot.id, now - slot.since,
                 slot.reason)
        self.stats["worker_back"] += 1
        slot.reason = ""
        self._slot_free(slot, now, "")

    # -- clients ---------------------------------------------------------------------------------
    def client_gone(self, exchange: Exchange) -> None:
        """The client of a request being answered went away: a queued request is dropped, the
        worker of a request it serves is told (its connection ends: an app sees the client
        leave), and the request is logged with what became of it."""
        state = exchange.state
        if state == QUEUED:
            self.pool.unqueued()
            exchange.note = exchange.note or "client closed while queued"
            self.stats["client_gone_queued"] += 1
        elif state in (WAITING, STREAMING):
            slot = exchange.slot
            exchange.slot = None
            if slot is not None:
                self._close_upstream(slot)
                self._slot_free(slot, self.clock(), "the client left mid-request")
            exchange.note = exchange.note or "client closed"
            self.stats["client_gone"] += 1
        elif state == FLUSHING:
            exchange.note = exchange.note or "client closed"
        tunnel = exchange.tunnel
        if tunnel is not None:  # a WebSocket: its end is its client's
            exchange.tunnel = None
            self.tunnels.discard(tunnel)
            tunnel.slot.open -= 1
            tunnel.close()
            if exchange.status == 101:
                exchange.note = ""  # how a WebSocket ends: not worth a note
        if state != DONE:
            self.finished(exchange)

    def finished(self, exchange: Exchange) -> float:
        """`exchange` is answered (or given up): counted and logged, once. Returns the time."""
        if not exchange.status:
            exchange.status = 499  # given up before any response: its client left
        exchange.move(DONE)
        now = self.clock()
        seconds = now - exchange.received
        self.metrics.request(exchange.status, seconds)
        self.access_log.record(exchange, exchange.status, exchange.sent, seconds)
        return now

    # -- timeouts and invariants ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Every deadline, checked here rather than with a timer per request. Each step stands
        alone: one that fails is reported and the rest goes on."""
        try:
            for exchange in self.pool.expired(now):
                self.stats["queue_timeout"] += 1
                exchange.client.answer_error(exchange, 504, "queue timeout")
        except Exception as exc:
            self.internal_error(exc, "the queue's timeouts")
        for slot in list(self.pool.slots.values()):
            try:
                self._slot_tick(slot, now)
            except Exception as exc:
                self.internal_error(exc, f"worker {slot.id}'s timeouts")
        for client in list(self.clients):
            try:
                client.timed_out(now)
            except Exception as exc:
                self.internal_error(exc, "a client connection's timeouts")
                client.abort()
        limit = self.options.response_timeout
        for tunnel in list(self.tunnels):
            if tunnel.state <= HANDSHAKE and now - tunnel.exchange.dispatched > limit:
                tunnel.close()
                self.stats["hung"] += 1
                self.tunnel_ended(tunnel, f"no answer to a WebSocket within {limit:g} s", True,
                                  504)
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            self.wall_offset = time.time() - self.clock()
            try:
                self.repair(now)
            except Exception as exc:
                self.internal_error(exc, "the pool's invariants")

    def _slot_tick(self, slot: Slot, now: float) -> None:
        state = slot.state
        if state in (BUSY, DRAINING):
            exchange = slot.exchange
            if exchange is None:
                return  # repair() deals with it
            limit = self.options.response_timeout
            if exchange.state == WAITING and now - exchange.dispatched > limit:
                self._hung(slot, exchange, now, f"no response within {limit:g} s")
            elif exchange.state == STREAMING:
                longest = self.options.max_stream_duration
                if now - exchange.last_byte > limit:
                    self._hung(slot, exchange, now, f"silent mid-response for {limit:g} s")
                elif longest and now - exchange.dispatched > longest:
                    self._end_stream(slot, exchange, now, longest)
        elif state == PROBING:
            limit = self.options.response_timeout
            if not slot.reported and now - slot.since > limit:
                # Not idle again within the time a response may take: hung, or gone for good.
                # The manager replaces a worker reported hung; its successor is probed in.
                slot.reported = True
                log.error("worker %s out of rotation for %.0f s (%s): reported hung", slot.id,
                          now - slot.since, slot.reason)
                self.hung.append(slot.id)
                self.stats["hung"] += 1
            if slot.probe_at:
                if now >= slot.probe_at:
                    self._probe(slot, now)
            elif now - slot.probe_sent > PROBE_TIMEOUT:
                self._close_upstream(slot)
                self._probe_later(slot, now, "no answer")

    def _end_stream(self, slot: Slot, exchange: Exchange, now: float, longest: float) -> None:
        """A response went on for max_stream_duration: its worker's connection is closed (the
        app sees its client leave, as when one does, and the worker is probed back in). A
        chunked response ends cleanly with its last chunk (an SSE client reconnects, as after
        any end); one of a declared length can only be cut short."""
        why = f"max_stream_duration ({longest:g} s)"
        log.info("worker %s: %s %s streamed for %s: ended", slot.id, exchange.method,
                 exchange.target.decode("latin-1"), why)
        self.stats["streams_ended"] += 1
        exchange.slot = None
        self._close_upstream(slot)
        self._slot_free(slot, now, f"its response reached {why}")
        if exchange.chunked:
            exchange.note = why
            exchange.move(FLUSHING)
            exchange.client.response_end(exchange)
        else:
            exchange.client.broken(exchange, why)

    def _hung(self, slot: Slot, exchange: Exchange, now: float, why: str) -> None:
        log.error("worker %s: %s to %s %s: reported hung", slot.id, why, exchange.method,
                  exchange.target.decode("latin-1"))
        self.hung.append(slot.id)
        self.stats["hung"] += 1
        exchange.slot = None
        self._close_upstream(slot)
        self._slot_free(slot, now, f"hung ({why})")
        if exchange.state == STREAMING:
            exchange.client.broken(exchange, "worker response timeout")
        else:
            exchange.client.answer_error(exchange, 504, "worker response timeout")

    def violations(self) -> list[str]:
        """What is wrong with the pool, the queue and the clients' lines, as text: nothing,
        unless there is a bug. The tests check it after every step; `repair` mends it."""
        found: list[str] = []
        pool = self.pool
        idle = set(map(id, pool.idle))
        if len(idle) != len(pool.idle):
            found.append("a worker is idle twice")
        for slot in pool.slots.values():
            state = slot.state
            if (state == READY) != (id(slot) in idle):
                found.append(f"worker {slot.id} is {('not ' if state == READY else '')}idle "
                             f"but {('' if state == READY else 'not ')}ready")
            exchange = slot.exchange
            if state in (BUSY, DRAINING):
                if exchange is None or exchange.slot is not slot or exchange.state not in (
                        WAITING, STREAMING):
                    found.append(f"worker {slot.id} is busy with no request")
            elif exchange is not None:
                found.append(f"worker {slot.id} holds a request while not busy")
        queued = sum(1 for exchange in pool.queue if exchange.state == QUEUED)
        if queued != pool.queued:
            found.append(f"the queue counts {pool.queued} waiting, holds {queued}")
        if queued and pool.idle:
            found.append("requests wait in the queue while a worker is idle")
        for client in self.clients:
            started = [e for e in client.exchanges if not isinstance(e, Exception) and e.started]
            if len(started) > 1 or (started and client.exchanges[0] is not started[0]):
                found.append("a connection answers a request out of turn")
            for exchange in started:
                if exchange.state in (WAITING, STREAMING) and exchange.tunnel is None and (
                        exchange.slot is None or exchange.slot.exchange is not exchange):
                    found.append(f"request {exchange.request_id} waits on no worker")
        for tunnel in self.tunnels:
            if tunnel.exchange.tunnel is not tunnel or tunnel.exchange.state not in (
                    WAITING, STREAMING):
                found.append(f"a WebSocket of request {tunnel.exchange.request_id} is kept "
                             "after its end")
        return found

    def repair(self, now: float) -> None:
        """Mend what violations() would find: a worker idle but not in rotation (or the
        reverse), busy with nothing, or a request with no worker. Each is logged and counted."""
        problems = self.violations()
        if not problems:
            return
        self.stats["invariant_repairs"] += 1
        log.error("repairing the pool: %s", "; ".join(problems))
        pool = self.pool
        pool.idle = type(pool.idle)(s for s in dict.fromkeys(pool.idle)
                                    if s.state == READY and pool.slots.get(s.id) is s)
        in_idle = set(map(id, pool.idle))
        for slot in pool.slots.values():
            exchange = slot.exchange
            if slot.state == READY and id(slot) not in in_idle:
                pool.idle.append(slot)
            elif slot.state in (BUSY, DRAINING) and (
                    exchange is None or exchange.slot is not slot
                    or exchange.state not in (WAITING, STREAMING)):
                slot.exchange = None
                self._close_upstream(slot)
                if slot.state == DRAINING:
                    slot.move(DRAINED, now)
                    self._settle_drain(slot)
                else:
                    self._to_probing(slot, "repaired: busy with no request", now)
            elif slot.state not in (BUSY, DRAINING):
                slot.exchange = None
        pool.queued = sum(1 for exchange in pool.queue if exchange.state == QUEUED)
        for tunnel in list(self.tunnels):
            if tunnel.exchange.tunnel is not tunnel or tunnel.exchange.state not in (
                    WAITING, STREAMING):
                self.tunnels.discard(tunnel)
                tunnel.slot.open -= 1
                tunnel.close()
        while pool.queued and pool.idle:  # a waiting request and an idle worker: together
            slot = pool.idle[0]
            pool.acquire_this(slot, now)
            self._slot_free(slot, now, "")
        for client in list(self.clients):
            for item in client.exchanges:
                if (not isinstance(item, Exception) and item.state in (WAITING, STREAMING)
                        and item.tunnel is None
                        and (item.slot is None or item.slot.exchange is not item)):
                    item.slot = None
                    client.abort()  # its request has no worker: only closing ends it
                    break

    def internal_error(self, exc: BaseException, where: str) -> None:
        """A bug of ours in `where`: counted, logged with its traceback (at most every
        REPORT_INTERVAL per place), and the caller repairs what it can."""
        self.stats["internal_errors"] += 1
        if self._due(f"error:{where}"):
            log.error("internal error in %s (the connection is closed; %d so far)", where,
                      self.stats["internal_errors"], exc_info=exc)

    def spool_failed(self, exc: OSError, what: str) -> None:
        """A temporary file could not be written: counted, logged at most every
        REPORT_INTERVAL, naming the directory."""
        import tempfile

        self.stats["spool_errors"] += 1
        if self._due("spool"):
            log.error("cannot spool %s to %s: %s (%d so far)", what, tempfile.gettempdir(),
                      exc.strerror or exc, self.stats["spool_errors"])

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._reported.get(key, -REPORT_INTERVAL) < REPORT_INTERVAL:
            return False
        self._reported[key] = now
        return True

    def drain_app(self, why: str) -> None:
        """Readiness fails from now on (`why`: "" undoes it); every request is still served."""
        if why and not self.draining:
            self.draining_since = self.clock()
        self.draining = why

    def drained_for(self) -> float:
        """How long readiness has failed because of a drain (0 when not draining)."""
        return self.clock() - self.draining_since if self.draining else 0.0

    def readiness(self) -> tuple[int, bytes]:
        """GET ready_path: may a load balancer in front send work here?"""
        if self.draining:
            return 503, b"503 draining\n"
        if not self.accepting:
            return 503, b"503 stopping\n"
        if not self.pool.serving:
            return 503, b"503 no worker ready\n"
        return 200, b"ready\n"

    def begin_stop(self) -> None:
        """No new requests: idle connections close, busy ones after their response."""
        self.accepting = False
        for client in list(self.clients):
            client.close_if_idle()

    @property
    def in_flight(self) -> int:
        """Requests being answered, over all client connections."""
        return sum(1 for client in self.clients if client.answering)

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

    def status(self) -> dict[str, Any]:
        from ripsvc import __version__

        pool = self.pool
        out = {s.id: f"{s.reason} (for {time.monotonic() - s.since:.1f} s)"
               for s in pool.slots.values() if s.state == PROBING}
        return {
            "status": "healthy" if pool.serving and not self.app_health else "degraded",
            **({"health": self.app_health} if self.app_health else {}),
            "app": self.options.app,
            "workers": pool.counts(),
            "queue": {"depth": pool.queued, "max": pool.max_queue},
            **({"websockets": {"open": sum(s.open for s in pool.websockets.values()),
                               "workers": len(pool.websockets)}} if pool.websockets else {}),
            "ports": self.ports,
            "draining": self.draining,
            "uptime": round(time.time() - self.started, 3),
            "version": __version__,
            **({"out_of_rotation": out} if out else {}),
        }
