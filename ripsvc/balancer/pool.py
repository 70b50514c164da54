"""The pool of workers and the queue of requests waiting for one.

Only registered, ready workers are in the pool; each serves at most one request at a time.
Idle workers are taken round-robin (a deque: taken from the left, returned on the right), and
when none is idle a request waits in a bounded FIFO that is served in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ripsvc import logs

if TYPE_CHECKING:
    from ripsvc.balancer.exchange import Exchange
    from ripsvc.balancer.upstream import Upstream

log = logs.get("balancer.pool")


class Slot:
    """One registered worker."""

    __slots__ = (
        "busy",
        "drained",
        "draining",
        "failed",
        "id",
        "joined",
        "path",
        "served",
        "upstream",
        "version",
    )

    def __init__(self, worker_id: str, path: str, version: str) -> None:
        self.id = worker_id
        self.path = path
        self.version = version
        self.busy = False
        self.draining = False
        self.failed = ""  # why it left the pool ("" while it is in it)
        self.served = 0
        self.joined = time.time()
        self.upstream: Upstream | None = None
        self.drained: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        return not (self.draining or self.failed)

    @property
    def state(self) -> str:
        if self.failed:
            return self.failed
        if self.draining:
            return "draining"
        return "busy" if self.busy else "ready"

    def describe(self) -> dict[str, object]:
        return {"id": self.id, "socket": self.path, "version": self.version,
                "state": self.state, "served": self.served, "joined": self.joined}


class QueueFull(Exception):
    pass


class Pool:
    def __init__(self, max_queue: int) -> None:
        self.slots: dict[str, Slot] = {}
        self.idle: deque[Slot] = deque()
        self.queue: deque[Exchange] = deque()
        self.max_queue = max_queue
        # Version-aware: while old and new versions serve side by side (a rolling restart),
        # an idle new-version worker is taken before any old one.
        self.newest = ""
        self.mixed = False
        self.dispatch: Callable[[Exchange, Slot], None] | None = None

    # -- membership ------------------------------------------------------------------------
    def join(self, slot: Slot) -> Slot:
        """Add `slot`; joining again with the same id and socket keeps the slot as it is
        (a restarted worker re-joins while its successor may already be serving)."""
        old = self.slots.get(slot.id)
        if old is not None and old.path == slot.path and old.usable:
            old.version = slot.version or old.version
            self._check_versions()
            return old
        if old is not None:
            self.remove(old, "replaced")
        self.slots[slot.id] = slot
        log.info("worker %s joined (%s, version %s)", slot.id, slot.path, slot.version or "-")
        if slot.version:
            self.newest = slot.version
        self._check_versions()
        self.release(slot)
        return slot

    def remove(self, slot: Slot, why: str) -> None:
        """Take `slot` out of the pool for good (leave, failure, replacement)."""
        if self.slots.get(slot.id) is slot:
            del self.slots[slot.id]
        slot.failed = slot.failed or why
        with contextlib.suppress(ValueError):
            self.idle.remove(slot)
        if slot.upstream is not None:
            slot.upstream.close()
        self._settle_drain(slot)
        self._check_versions()

    def _check_versions(self) -> None:
        self.mixed = any(s.version != self.newest for s in self.slots.values() if s.usable)

    def fail(self, slot: Slot, why: str) -> None:
        """A worker refused connections or broke a response: out of the pool at once."""
        log.warning("worker %s leaves the pool: %s", slot.id, why)
        slot.failed = "failed"
        self.remove(slot, "failed")

    # -- requests ----------------------------------------------------------------------------
    def acquire(self) -> Slot | None:
        idle = self.idle
        if self.mixed:
            for slot in idle:
                if slot.version == self.newest and slot.usable:
                    idle.remove(slot)
                    slot.busy = True
                    return slot
        while idle:
            slot = idle.popleft()
            if slot.usable:
                slot.busy = True
                return slot
        return None

    def enqueue(self, exchange: Exchange) -> None:
        if len(self.queue) >= self.max_queue:
            raise QueueFull
        self.queue.append(exchange)

    def release(self, slot: Slot) -> None:
        """`slot` finished its request: give it to the longest waiting request, or idle it."""
        slot.busy = False
        if not slot.usable:
            self._settle_drain(slot)
            return
        queue = self.queue
        while queue:
            exchange = queue.popleft()
            if exchange.waiting:
                slot.busy = True
                assert self.dispatch is not None
                self.dispatch(exchange, slot)
                return
        self.idle.append(slot)

    def expire_queue(self, now: float) -> None:
        """Requests whose queue time ran out leave the queue (oldest first: one timeout)."""
        queue = self.queue
        while queue and (not queue[0].waiting or queue[0].queue_deadline <= now):
            exchange = queue.popleft()
            if exchange.waiting:
                exchange.queue_timed_out()

    # -- draining ----------------------------------------------------------------------------
    def drain(self, slot: Slot) -> asyncio.Future[None]:
        """No new requests for `slot`; the future is done when its request in flight is."""
        slot.draining = True
        self._check_versions()
        if slot.drained is None:
            slot.drained = asyncio.get_running_loop().create_future()
        with contextlib.suppress(ValueError):
            self.idle.remove(slot)
        self._settle_drain(slot)
        return slot.drained

    @staticmethod
    def _settle_drain(slot: Slot) -> None:
        if slot.drained is not None and not slot.busy and not slot.drained.done():
            slot.drained.set_result(None)

    # -- views -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        ready = busy = draining = 0
        for slot in self.slots.values():
            if slot.failed:
                continue
            if slot.draining:
                draining += 1
            elif slot.busy:
                busy += 1
            else:
                ready += 1
        return {"ready": ready, "busy": busy, "draining": draining, "total": len(self.slots)}

    @property
    def serving(self) -> bool:
        return any(slot.usable for slot in self.slots.values())

