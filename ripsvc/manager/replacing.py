"""How the manager puts a new worker where an old one was: rolling restarts, recycling
hand-offs, vacant positions (the app on disk cannot load) and scaling.

A mixin of Manager (core.py): its methods work on the manager's state, declared below, and
run in its loop or in tasks it started; the events here (recycle_soon, refill) are handled
like every other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ripsvc import logs, sd
from ripsvc.exitcodes import APP_LOAD_STATUS, ExitCode
from ripsvc.manager.balancer_client import BalancerClient, BalancerUnreachable
from ripsvc.manager.slots import WorkerSlot
from ripsvc.manager.supervisor import EXIT_UNKNOWN, Handle, ServePlan, Supervisor
from ripsvc.recycle import HOLD_SIGNAL, RELEASE_SIGNAL, reason_of

log = logs.get("manager")

#: A vacant worker position (the app on disk fails to load) is tried again after this many
#: seconds, doubling after each failed attempt up to LOAD_BACKOFF_MAX.
LOAD_BACKOFF = 1.0
LOAD_BACKOFF_MAX = 30.0


class Replacing:
    # What this part uses of the manager (core.py defines it).
    loop: asyncio.AbstractEventLoop
    plan: ServePlan
    supervisor: Supervisor
    slots: list[WorkerSlot]
    balancer: Handle | None
    version: int
    tls: bool
    stopping: bool
    started: bool
    reloading: asyncio.Task[str | None] | None
    load_error: str | None
    load_failed_at: float
    client: BalancerClient
    _held: set[str]
    _replacing: set[asyncio.Task[Any]]
    _recycle_after_reload: set[Handle]

    if TYPE_CHECKING:
        def post(self, kind: str, child: Handle | None, value: Any) -> None: ...
        def start_worker(self, slot: WorkerSlot) -> Handle: ...
        def new_slot(self, number: int, websocket: bool = False) -> WorkerSlot: ...
        def http_slots(self) -> list[WorkerSlot]: ...
        def websocket_slots(self) -> list[WorkerSlot]: ...
        async def join(self, slot: WorkerSlot) -> None: ...
        def _announce_ready(self) -> None: ...
        def worker_gone(self, slot: WorkerSlot, child: Handle, code: int) -> None: ...
        async def control(self, command: str, body: dict[str, object],
                          timeout: float | None = None) -> dict[str, Any] | None: ...
        async def drain_and_leave(self, worker_id: str) -> None: ...
        async def reload_certificate(self) -> str | None: ...
        def _count(self, event: str) -> None: ...
        def _spawn(self, coro: Any) -> None: ...
        def _children(self) -> list[Handle]: ...
        def _slot_of(self, child: Handle) -> WorkerSlot | None: ...
        def ready_workers(self, slots: list[WorkerSlot] | None = None) -> int: ...
        def health(self) -> str: ...
        def status_line(self) -> str: ...

    # -- rolling restart -----------------------------------------------------------------------
    def reload(self) -> asyncio.Task[str | None] | None:
        """Start a rolling restart; None if one is already running (it is not queued)."""
        if self.reloading is not None and not self.reloading.done():
            log.warning("a rolling restart is already in progress; this one is refused")
            return None
        sd.notify("RELOADING=1")
        self.reloading = self.loop.create_task(self._rolling_restart())
        self.reloading.add_done_callback(self._reloaded)
        return self.reloading

    def _reloaded(self, _: asyncio.Task[str | None]) -> None:
        if not self.stopping:
            sd.notify("READY=1", f"STATUS={self.status_line()}")
        # Successors of this restart that reached a limit meanwhile: their turn now.
        for child in self._recycle_after_reload:
            if not child.exited.done():
                self.post("recycle_soon", child, 0)
        self._recycle_after_reload.clear()

    async def _rolling_restart(self) -> str | None:
        """Each worker in turn is replaced (see replace), vacant positions first. Returns None
        when done, or why it stopped (the old workers keep serving)."""
        if self._replacing:  # recycling hand-offs and refills under way finish first
            await asyncio.wait(set(self._replacing))
        if self.tls:  # a renewed certificate comes with the new code
            why = await self.reload_certificate()
            if why is not None:
                return why
        self._count("reloads")
        self.version += 1
        log.info("rolling restart of %d workers to version %d", len(self.slots), self.version)
        # Vacant positions first; WebSocket workers last (their WebSockets are closed with
        # 1001 for their clients to reconnect, to the new code by then).
        for slot in sorted(self.slots, key=lambda s: (s.websocket, s.child is not None)):
            why = await self.replace(slot)
            if why is not None:
                log.error("rolling restart stopped: %s", why)
                self.version -= 1
                return why
        log.info("rolling restart done")
        return None

    async def replace(self, slot: WorkerSlot) -> str | None:
        """A successor on a fresh socket, READY, joined; then `slot`'s worker is drained and
        stopped. Returns why it could not be done (the old worker keeps serving), or None."""
        old = slot.child
        if old is not None:
            old.retired = True  # its exit from now on is ours to handle
        fresh, why = await self.start_successor(slot)
        if fresh is None:
            if slot not in self.slots:  # a WebSocket position the new code has no use for
                return None
            if old is not None:
                old.retired = False
                if old.exited.done() and not self.stopping:  # it left meanwhile
                    self.worker_gone(slot, old, old.exited.result())
            return f"{why}; the old workers keep serving"
        if slot in self.slots:
            self.slots[self.slots.index(slot)] = fresh
        if slot.retry is not None:
            slot.retry.cancel()
        if old is not None:
            await self.drain_and_leave(slot.id)
            old.terminate()
            await old.exited
        self.supervisor.release_socket(slot.path)
        return None

    async def start_successor(self, slot: WorkerSlot) -> tuple[WorkerSlot | None, str]:
        """A worker for `slot`'s position on a fresh socket (a new id), READY and joined to
        the pool: its slot. Or None and why not (its socket released). A WebSocket worker
        whose new code has no WebSockets takes the WebSocket positions away (no_websockets)."""
        fresh = self.new_slot(slot.number, slot.websocket)
        child = self.start_worker(fresh)
        either: list[asyncio.Future[Any]] = [child.ready, child.exited]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if child.ready.done() and not child.ready.cancelled():
            await self.join(fresh)
            return fresh, ""
        self.supervisor.release_socket(fresh.path)
        code = await child.exited
        if code == ExitCode.NO_WEBSOCKETS and slot.websocket:
            self.no_websockets()
            return None, "the app has no WebSockets"
        if code == ExitCode.APP_LOAD_ERROR:
            return None, f"worker {child.id} cannot load the app: {self.load_failed(child)}"
        return None, f"worker {child.id} {exit_text(code)} before READY"

    async def handle_recycle_soon(self, child: Handle | None, _: int) -> None:
        """A worker reached a recycling limit and waits for a successor (--recycle-handoff):
        replace it first, so capacity never dips. During a rolling restart a worker of an
        older version is left alone: the restart replaces it anyway, and its hand-off timeout
        bounds the wait; a successor the restart started (the current version, which it will
        not replace: one over max_rss at once, say) is replaced once the restart is over.
        While the app on disk cannot load, it is told to hold (it serves until a good
        deploy)."""
        assert child is not None
        slot = self._slot_of(child)
        if slot is None or child.retired or self.stopping:
            return  # retired: a rolling restart or another hand-off is replacing it
        if self.reloading is not None and not self.reloading.done():
            if child.version == self.version:
                self._recycle_after_reload.add(child)
            return
        if self.load_error is not None:
            self._held.discard(child.id)
            self.hold_recycling()
            return
        log.info("worker %s asks to be recycled: starting its successor first (%s)", child.id,
                 child.status)
        self.count_recycle(child)
        task = self.loop.create_task(self.replace(slot))
        self._replacing.add(task)
        task.add_done_callback(self._replaced)

    def count_recycle(self, child: Handle) -> str:
        """A worker recycles (it asked for a successor, or exited 75): counted in the
        balancer's metrics by the reason its last STATUS= gives (rip_worker_recycles)."""
        reason = reason_of(child.status)
        self._count(f"recycles_{reason}")
        return reason

    def _replaced(self, task: asyncio.Task[str | None]) -> None:
        self._replacing.discard(task)
        if not task.cancelled() and task.result() is not None:
            log.error("recycling hand-off failed: %s", task.result())

    # -- the app on disk cannot load -------------------------------------------------------------
    def load_failed(self, child: Handle) -> str:
        """A worker exited 4: remember why (its last STATUS=, which names the error and where),
        hold recycling everywhere, and return the reason."""
        status = child.status
        why = status[len(APP_LOAD_STATUS):] if status.startswith(APP_LOAD_STATUS) else \
            "see the worker's log"
        self.load_error = why
        self.load_failed_at = time.time()
        self.hold_recycling()
        return why

    def load_recovered(self, child: Handle) -> None:
        """A worker started after the last failure loaded the app: the code on disk is good
        again. The workers held past their limits may recycle (RELEASE_SIGNAL)."""
        log.info("worker %s loaded the app: the app on disk loads again; recycling resumes",
                 child.id)
        self.load_error = None
        for worker in self._children():
            if worker.id in self._held and worker is not self.balancer:
                worker.send(RELEASE_SIGNAL)
        self._held.clear()

    def hold_recycling(self) -> None:
        """Every ready worker serves on past its recycling limits (HOLD_SIGNAL): its successor
        would not load. The limits wait for the next good deploy (or load_recovered)."""
        for worker in self._children():
            ready = worker.ready.done() and not worker.ready.cancelled()
            if worker is self.balancer or worker.id in self._held or not ready:
                continue
            if not self._held:
                log.warning("recycling held: the app on disk fails to load (%s); the workers "
                            "serve past their recycling limits until the next good deploy",
                            self.load_error)
            self._held.add(worker.id)
            worker.send(HOLD_SIGNAL)

    def vacate(self, slot: WorkerSlot, what: str) -> None:
        """The worker of `slot` is gone and the app on disk cannot load: rather than a restart
        on its socket (whose backlog would hold requests for a worker that never comes), it
        leaves the pool and its socket is closed; a successor on a fresh socket is tried
        after a back-off (handle_refill), and takes the position only once it is ready."""
        old_id = slot.child.id if slot.child is not None else slot.id
        slot.child = None
        self._held.discard(old_id)
        self._count("worker_restarts")
        self._spawn(self._leave_and_close(old_id, slot.path))
        self._retry_later(slot, what)

    async def _leave_and_close(self, worker_id: str, path: Path) -> None:
        """A gone worker out of the pool, then its socket closed: in that order, so that the
        balancer never connects to a backlog nobody will accept. Not in the pool if it never
        was ready (nothing to do), and a balancer that does not answer is reconciled by the
        next look at its pool."""
        with contextlib.suppress(BalancerUnreachable):
            await self.client.call("leave", {"id": worker_id})
        self.supervisor.release_socket(path)

    def _retry_later(self, slot: WorkerSlot, what: str) -> None:
        slot.failed_attempts += 1
        delay = min(LOAD_BACKOFF_MAX, LOAD_BACKOFF * 2 ** (slot.failed_attempts - 1))
        slot.retry = self.loop.call_later(delay, self.post, "refill", None, slot)
        slot.retry_at = self.loop.time() + delay
        log.error("%s; %s; the next attempt at %sposition %d in %.0f s", what, self.health(),
                  "WebSocket " if slot.websocket else "", slot.number, delay)
        if self.started:
            sd.notify(f"STATUS={self.status_line()}")

    async def handle_refill(self, _: Handle | None, slot: WorkerSlot) -> None:
        """A vacant position's back-off is over: try a successor (refill). During a rolling
        restart nothing is done: the restart fills vacant positions first."""
        if slot not in self.slots or slot.child is not None or self.stopping:
            return
        slot.retry = None
        if self.reloading is not None and not self.reloading.done():
            return
        task = self.loop.create_task(self.refill(slot))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def refill(self, slot: WorkerSlot) -> None:
        """A successor for the vacant `slot`: ready, it takes the position; otherwise the
        position stays vacant until the next attempt, twice as late."""
        fresh, why = await self.start_successor(slot)
        if fresh is None:
            if slot in self.slots and slot.child is None and not self.stopping:
                self._retry_later(slot, why)
            return
        if slot not in self.slots:  # scaled down meanwhile
            await self.drain_and_leave(fresh.id)
            if fresh.child is not None:
                fresh.child.terminate()
            self.supervisor.release_socket(fresh.path)
            return
        self.slots[self.slots.index(slot)] = fresh
        log.info("%s %s took position %d: %s", fresh.role, fresh.id, fresh.number,
                 self.health())
        if self.started:
            sd.notify(f"STATUS={self.status_line()}")

    # -- WebSocket workers -------------------------------------------------------------------------
    def no_websockets(self) -> None:
        """A WebSocket worker found that the app has no WebSockets (a WSGI app: it exited
        NO_WEBSOCKETS): the WebSocket positions go for this run, and a WebSocket upgrade
        reaches the app as a plain request, as under gunicorn (balancer/client.py). Workers
        of older code still holding WebSockets are drained and stopped (their WebSockets are
        closed with 1001, for their clients to reconnect)."""
        gone = self.websocket_slots()
        if not gone:
            return
        log.info("the app has no WebSockets (a WSGI app): no WebSocket workers; a WebSocket "
                 "upgrade reaches the app as a plain request")
        for slot in gone:
            self.slots.remove(slot)
            if slot.retry is not None:
                slot.retry.cancel()
        for slot in gone:
            child = slot.child
            if child is not None and not child.exited.done():
                child.retired = True
            self._spawn(self._retire(slot))
        self._announce_ready()

    async def _retire(self, slot: WorkerSlot) -> None:
        """A position given up (no_websockets): its worker drained (its WebSockets closed
        with 1001 after graceful_timeout) and stopped, then its socket closed."""
        child = slot.child
        if child is not None and not child.exited.done():
            if child.ready.done() and not child.ready.cancelled():
                await self.drain_and_leave(child.id)
            child.terminate()
        self.supervisor.release_socket(slot.path)

    # -- scaling -------------------------------------------------------------------------------
    async def scale(self, workers: int) -> None:
        """Start workers up to `workers`, or drain and stop the highest-numbered ones
        (WebSocket workers are not counted, nor scaled)."""
        while len(self.http_slots()) < workers:
            number = max((s.number for s in self.http_slots()), default=0) + 1
            slot = self.new_slot(number)
            self.slots.append(slot)
            self.start_worker(slot)
        while len(self.http_slots()) > workers:
            slot = max(self.http_slots(), key=lambda s: s.number)
            self.slots.remove(slot)
            if slot.retry is not None:
                slot.retry.cancel()
            child = slot.child
            if child is not None:
                child.retired = True
                await self.drain_and_leave(child.id)
                child.terminate()
                await child.exited
            self.supervisor.release_socket(slot.path)


def exit_text(code: int) -> str:
    """"exited with 3", or "was killed by SIGKILL" (a negative code: the signal)."""
    if code == EXIT_UNKNOWN:
        return "exited (its exit status was lost: systemd had started it again)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
