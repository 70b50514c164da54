"""The pool of workers and the queue of requests waiting for one.

Each registered worker has a Slot, whose state machine is the pool's rule (SPEC §4, §8): a
worker leaves the pool only when it is removed (its process is gone, or it was drained);
any other trouble (a broken response, a timeout, a refused connection, a client that left
mid-request) ends that one connection and puts the slot in PROBING, from which a probe on a
fresh connection brings it back once the worker answers that it is idle.

    READY ◀──▶ BUSY ──▶ PROBING ──▶ READY (or BUSY, when a request waits)
      │          │         │
      │          ▼         │
      │      DRAINING      │
      ▼          ▼         ▼
    DRAINED ◀────┴─────────┘        any state ──▶ GONE (removed)

Idle workers are taken round-robin (a deque: from the left, returned on the right); while old
and new versions serve side by side (a rolling restart), an idle new-version worker is taken
first. When none is idle a request waits in a bounded FIFO served in arrival order. The pool
does no I/O and calls nothing: the balancer (core.py) acts on what it returns.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ripsvc import logs
from ripsvc.balancer.exchange import QUEUED

if TYPE_CHECKING:
    from ripsvc.balancer.exchange import Exchange
    from ripsvc.balancer.upstream import Upstream

log = logs.get("balancer.pool")

READY: Final = 0
BUSY: Final = 1
PROBING: Final = 2
DRAINING: Final = 3  # no new requests; busy with its last one
DRAINED: Final = 4  # no new requests; idle
GONE: Final = 5
NAMES = ("ready", "busy", "probing", "draining", "drained", "gone")


def _bits(*states: int) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


TRANSITIONS: tuple[int, ...] = (
    _bits(BUSY, PROBING, DRAINED, GONE),  # READY
    _bits(READY, PROBING, DRAINING, GONE),  # BUSY
    _bits(READY, BUSY, PROBING, DRAINED, GONE),  # PROBING
    _bits(DRAINED, GONE),  # DRAINING
    _bits(GONE),  # DRAINED
    0,  # GONE
)

#: Probes of a slot in PROBING: the first at once, then backing off to this interval.
PROBE_FIRST = 0.05
PROBE_MAX = 1.0


class QueueFull(Exception):
    pass


class WebSocketSlot:
    """One WebSocket worker: it holds many WebSockets at once, up to its capacity."""

    __slots__ = ("capacity", "draining", "id", "joined", "open", "opened", "path", "version")

    def __init__(self, worker_id: str, path: str, version: str, capacity: int) -> None:
        self.id = worker_id
        self.path = path
        self.version = version
        self.capacity = capacity
        self.open = 0
        self.opened = 0
        self.draining = False  # no new WebSockets (its own close them in time)
        self.joined = time.time()

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "socket": self.path, "version": self.version,
                "kind": "websocket", "state": "draining" if self.draining else "ready",
                "open": self.open, "opened": self.opened, "capacity": self.capacity,
                "served": self.opened, "reason": "", "joined": self.joined}


class Slot:
    """One registered worker: its socket, state, and the connection and exchange it has."""

    __slots__ = ("drained", "exchange", "failures", "id", "joined", "path", "probe_at",
                 "probe_delay", "probe_sent", "reason", "reported", "served", "since", "state",
                 "upstream", "version")

    def __init__(self, worker_id: str, path: str, version: str) -> None:
        self.id = worker_id
        self.path = path
        self.version = version
        self.state = READY
        self.since = time.monotonic()  # when it entered its state
        self.reason = ""  # why it is PROBING (or GONE)
        self.exchange: Exchange | None = None  # BUSY, DRAINING: the request it serves
        self.upstream: Upstream | None = None  # its open (or opening) connection
        self.served = 0
        self.failures = 0  # times it went to PROBING
        self.joined = time.time()
        self.probe_at = 0.0  # PROBING: when the next probe is due (0: one is under way)
        self.probe_delay = PROBE_FIRST
        self.probe_sent = 0.0
        self.reported = False  # out of rotation too long: reported hung (once per time out)
        self.drained: list[Callable[[], None]] = []  # called once DRAINED (or GONE)

    def move(self, to: int, now: float) -> None:
        if not (TRANSITIONS[self.state] >> to) & 1:
            raise RuntimeError(f"worker {self.id}: {NAMES[self.state]} -> {NAMES[to]}")
        self.state = to
        self.since = now

    @property
    def usable(self) -> bool:
        """In rotation: READY or BUSY (not probing, draining, or gone)."""
        return self.state <= BUSY

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "socket": self.path, "version": self.version,
                "state": NAMES[self.state], "reason": self.reason, "served": self.served,
                "failures": self.failures, "joined": self.joined,
                "for": round(time.monotonic() - self.since, 3)}


class Pool:
    def __init__(self, max_queue: int) -> None:
        self.slots: dict[str, Slot] = {}
        self.idle: deque[Slot] = deque()  # the READY slots
        self.queue: deque[Exchange] = deque()  # QUEUED exchanges (others are skipped)
        self.queued = 0  # how many of them are still QUEUED
        self.max_queue = max_queue
        # Version-aware: while old and new versions serve side by side (a rolling restart),
        # an idle new-version worker is taken before any old one.
        self.newest = ""
        self.mixed = False
        self.websockets: dict[str, WebSocketSlot] = {}

    # -- membership ------------------------------------------------------------------------
    def join(self, slot: Slot) -> tuple[Slot, Slot | None]:
        """Add `slot` READY. A slot already there with the same id and socket stays as it is
        (a restarted worker re-joins while its successor may be serving already): returns
        (the slot in the pool, a slot it replaced and the caller must remove)."""
        old = self.slots.get(slot.id)
        if old is not None and old.path == slot.path and old.state < DRAINING:
            old.version = slot.version or old.version
            self._check_versions()
            return old, None
        self.slots[slot.id] = slot
        log.info("worker %s joined (%s, version %s)", slot.id, slot.path, slot.version or "-")
        if slot.version:
            self.newest = slot.version
        self.idle.append(slot)
        self._check_versions()
        return slot, old

    def remove(self, slot: Slot, why: str, now: float) -> None:
        """Take `slot` out of the pool for good. The caller closes its connection and deals
        with its exchange first."""
        if self.slots.get(slot.id) is slot:
            del self.slots[slot.id]
        if slot.state == READY:
            self._unidle(slot)
        if slot.state != GONE:
            slot.move(GONE, now)
        slot.reason = slot.reason or why
        slot.exchange = None
        self._check_versions()

    def _check_versions(self) -> None:
        self.mixed = any(s.version != self.newest for s in self.slots.values() if s.usable)

    def _unidle(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(slot)

    # -- requests ----------------------------------------------------------------------------
    def acquire(self, now: float) -> Slot | None:
        """An idle worker, now BUSY; None when none is idle."""
        idle = self.idle
        if not idle:
            return None
        slot: Slot | None = None
        if self.mixed:
            for candidate in idle:
                if candidate.version == self.newest:
                    slot = candidate
                    break
            if slot is not None:
                idle.remove(slot)
        if slot is None:
            slot = idle.popleft()
        slot.move(BUSY, now)
        return slot

    def acquire_this(self, slot: Slot, now: float) -> None:
        """`slot`, READY, taken out of the idle ones: BUSY."""
        self._unidle(slot)
        slot.move(BUSY, now)

    def set_idle(self, slot: Slot, now: float) -> None:
        """`slot` (BUSY or PROBING) is ready for a request and none is waiting."""
        slot.move(READY, now)
        slot.exchange = None
        self.idle.append(slot)

    def enqueue(self, exchange: Exchange) -> None:
        if self.queued >= self.max_queue:
            raise QueueFull
        self.queue.append(exchange)
        self.queued += 1

    def unqueued(self) -> None:
        """An exchange left QUEUED other than through next_queued (its client left, its
        time ran out); it stays in the deque until it reaches the front."""
        self.queued -= 1

    def next_queued(self) -> Exchange | None:
        """The longest waiting exchange, taken out of the queue."""
        queue = self.queue
        while queue:
            exchange = queue.popleft()
            if exchange.state == QUEUED:
                self.queued -= 1
                return exchange
        return None

    def expired(self, now: float) -> list[Exchange]:
        """Exchanges whose queue time ran out (oldest first: they all have the same timeout),
        taken out of the queue."""
        queue = self.queue
        found: list[Exchange] = []
        while queue and (queue[0].state != QUEUED or queue[0].queue_deadline <= now):
            exchange = queue.popleft()
            if exchange.state == QUEUED:
                self.queued -= 1
                found.append(exchange)
        return found

    # -- trouble and draining ------------------------------------------------------------------
    def to_probing(self, slot: Slot, why: str, now: float) -> None:
        """Out of rotation until a probe finds the worker idle."""
        if slot.state == READY:
            self._unidle(slot)
        slot.move(PROBING, now)
        slot.reported = False
        slot.reason = why
        slot.exchange = None
        slot.failures += 1
        slot.probe_delay = PROBE_FIRST
        slot.probe_at = now

    def drain(self, slot: Slot, now: float) -> None:
        """No new requests for `slot`; DRAINED now if it has none, else once it is done."""
        if slot.state == READY:
            self._unidle(slot)
        if slot.state == BUSY:
            slot.move(DRAINING, now)
        elif slot.state in (READY, PROBING):
            slot.move(DRAINED, now)
        self._check_versions()

    # -- WebSocket workers ------------------------------------------------------------------------
    def pick_websocket(self) -> WebSocketSlot | None:
        """The WebSocket worker for a new WebSocket: of the newest version, the least busy,
        not full, not draining; None when there is none."""
        best: WebSocketSlot | None = None
        best_key = (True, 0)
        for slot in self.websockets.values():
            if slot.draining or slot.open >= slot.capacity:
                continue
            key = (slot.version != self.newest, slot.open)  # the newest first, then the idlest
            if best is None or key < best_key:
                best, best_key = slot, key
        return best

    # -- views -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(NAMES[:GONE], 0)
        for slot in self.slots.values():
            counts[NAMES[slot.state]] += 1
        return {**counts, "total": len(self.slots)}

    @property
    def serving(self) -> bool:
        return any(slot.usable for slot in self.slots.values())
