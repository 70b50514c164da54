"""The manager: N workers behind a balancer, rolling restarts, scaling, health.

One loop (STYLE.md): signals, process events, control commands and a health tick are put on
one queue and each is handled by a `handle_<event>` method, in order. Processes and sockets
come from a supervisor backend (`supervisor.py`): `embedded.py` and `systemd.py`; the
logic in this module does not change with it. Putting new workers where old ones were
(rolling restarts, recycling hand-offs, vacant positions, scaling) is `replacing.py`.

A bad deploy never takes the app down (SPEC §8). A worker that cannot load the app (exit 4)
stops the app only on a cold start, when nothing has served yet. Afterwards the manager
knows the app on disk fails to load (`load_error`): old workers keep serving past their
recycling limits (held), and a worker that dies anyway leaves its position vacant: its
socket and its place in the pool go at once, and a successor on a fresh socket is tried
with a back-off, taking the position only once it is ready. The app runs degraded and says
so (STATUS=, `ripctl status`) until a worker loads again or a rolling restart succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from ripsvc import edge, hosts, logs, paths, sd
from ripsvc.control import CommandError
from ripsvc.exitcodes import ExitCode
from ripsvc.manager.balancer_client import BalancerClient, BalancerUnreachable
from ripsvc.manager.control import serve_control
from ripsvc.manager.draining import Draining
from ripsvc.manager.hosts_tls import HostsAndTLS
from ripsvc.manager.replacing import Replacing, exit_text
from ripsvc.manager.slots import WorkerSlot
from ripsvc.manager.supervisor import Handle, Post, ServePlan, Supervisor
from ripsvc.manager.watch import FileWatcher

log = logs.get("manager")

MAX_BACKOFF = 10.0
HEALTH_INTERVAL = 1.0
#: A worker sent SIGABRT (hung, or missed its watchdog) that has not exited this long after is
#: frozen (SIGSTOP, stuck in the kernel): SIGKILL.
KILL_AFTER = 5.0
#: A stop waits for the balancer and the workers at most graceful_timeout plus this; then
#: what still runs is killed.
STOP_MARGIN = 5.0


class Manager(Replacing, HostsAndTLS, Draining):
    """The manager's loop and its workers; rolling restarts and replacements are in
    replacing.py, the edge's commands (certificate, host registry) in hosts_tls.py, draining
    for a load balancer in front in draining.py."""

    def __init__(self, plan: ServePlan, backend: Callable[[ServePlan, Post], Supervisor]) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Handle | None, Any]] = asyncio.Queue()
        self.supervisor = backend(plan, self.post)
        self.runtime = self.supervisor.runtime
        self.control_path = paths.balancer_control(self.runtime)
        self.client = BalancerClient(self.control_path)
        self._checking: asyncio.Task[None] | None = None  # the tick's look at the pool
        self.version = 1  # bumped by each rolling restart; workers join with it
        self.slots: list[WorkerSlot] = []
        self.workers: list[Handle] = []  # every worker started and not seen exit
        self.balancer: Handle | None = None
        self.stopping = False
        self._stop_ended = False  # stop waited long enough, or systemd cannot be asked
        self.exit_code = ExitCode.OK
        self.started = False  # READY=1 sent
        self.ever_ready = False  # a worker has been ready: exit 4 no longer stops the app
        #: Why the app on disk cannot be loaded, from the last worker that tried; None once
        #: a worker started afterwards loaded it.
        self.load_error: str | None = None
        self.load_failed_at = 0.0  # when (time.time(), as Handle.started)
        self._held: set[str] = set()  # worker ids told to hold recycling
        self.reloading: asyncio.Task[str | None] | None = None
        self._sockets_made = 0
        self._hung_seen = 0
        self._requests = 0  # answered by the balancer, as of the last tick
        self._requests_before = 0  # answered by earlier balancers of this run
        self._balancer_backoff = 0
        self._replacing: set[asyncio.Task[Any]] = set()
        self._recycle_after_reload: set[Handle] = set()  # (replacing.handle_recycle_soon)
        self._counting: set[asyncio.Task[Any]] = set()
        self._ids_used: set[str] = set()
        self._leaving: set[str] = set()  # worker ids being drained out of the pool
        self._joining: set[str] = set()  # worker ids whose join the balancer has not answered
        self.restart_watch: FileWatcher | None = None
        self.state = plan.state_directory
        self.hosts = hosts.Registry(plan.hosts)
        self.tls = any(bind.tls for bind in plan.listen)
        self.init_draining()

    def post(self, kind: str, child: Handle | None, value: Any) -> None:
        self.events.put_nowait((kind, child, value))

    async def command(self, name: str, **args: Any) -> Any:
        """Control commands go through the event queue like every other change (STYLE.md):
        `command_<name>` runs in the loop; what it returns (maybe a task) comes back here."""
        future: asyncio.Future[Any] = self.loop.create_future()
        self.post("command", None, (name, args, future))
        return await future

    async def handle_command(self, _: Handle | None, value: Any) -> None:
        """A control-socket command (see command)."""
        name, args, future = value
        try:
            future.set_result(getattr(self, f"command_{name}")(**args))
        except Exception as exc:  # reported to the control client
            future.set_exception(exc)

    def command_reload(self) -> asyncio.Task[str | None] | None:
        return self.reload()

    def command_scale(self, workers: int) -> asyncio.Task[None]:
        if self.reloading is not None and not self.reloading.done():
            raise CommandError("reload-in-progress", "a rolling restart is in progress; "
                               "scale afterwards", 409)
        return self.loop.create_task(self.scale(workers))

    def command_stop(self) -> None:
        self.post("signal", None, signal.SIGTERM)

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> ExitCode:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.loop.add_signal_handler(signum, self.post, "signal", None, signum)
        control_runner = None
        try:
            control_runner = await serve_control(self)
            await self.supervisor.open()
            try:
                self.prepare_edge()
            except (edge.CertificateError, hosts.HostFileError) as exc:
                log.error("%s", exc)
                self.exit_code = ExitCode.USAGE
                return self.exit_code
            self.start_balancer()
            for number in range(1, self.plan.workers + 1):
                slot = self.new_slot(number)
                self.slots.append(slot)
                self.start_worker(slot)
            for number in range(1, self.plan.websocket_workers + 1):
                slot = self.new_slot(number, websocket=True)
                self.slots.append(slot)
                self.start_worker(slot)
            self._watch_restart_file()
            self.loop.call_later(HEALTH_INTERVAL, self.post, "tick", None, 0)
            stop_watchdog = sd.start_watchdog(self.loop)
            while not (self.stopping and (self._stop_ended or self._all_gone())):
                kind, child, value = await self.events.get()
                try:
                    await getattr(self, f"handle_{kind}")(child, value)
                except Exception:  # one failed event must not take the app down
                    log.exception("handling %s of %s failed", kind, child)
            stop_watchdog()
        finally:
            if control_runner is not None:
                await control_runner.cleanup()
            await self._cleanup()
        return self.exit_code

    def _all_gone(self) -> bool:
        return all(c.exited.done() for c in self._children())

    def _children(self) -> list[Handle]:
        """The balancer and every worker started that has not been seen to exit."""
        self.workers = [w for w in self.workers if not w.exited.done()]
        return [*([self.balancer] if self.balancer is not None else []), *self.workers]

    # -- starting ----------------------------------------------------------------------------
    def start_balancer(self) -> None:
        self.balancer = self.supervisor.start_balancer()

    def start_worker(self, slot: WorkerSlot) -> Handle:
        slot.child = self.supervisor.start_worker(slot.id, slot.path, websocket=slot.websocket)
        slot.child.version = self.version
        self.workers.append(slot.child)
        return slot.child

    async def join(self, slot: WorkerSlot) -> None:
        """The ready worker of `slot` into the balancer's pool (a WebSocket worker with the
        WebSockets it may hold at once)."""
        child = slot.child
        assert child is not None
        body: dict[str, object] = {"id": child.id, "socket": str(slot.path),
                                   "version": str(child.version)}
        if slot.websocket:
            body.update(kind="websocket", capacity=self.plan.settings.websocket_connections)
        await self.control("join", body)

    def start_join(self, slot: WorkerSlot) -> None:
        """join() as a task, for a handler (no handler waits on the balancer): its end comes
        back as a "joined" event. Once at a time per worker."""
        child = slot.child
        if child is None or child.id in self._joining:
            return
        self._joining.add(child.id)

        async def joining() -> None:
            try:
                await self.join(slot)
            finally:
                self.post("joined", child, 0)
        self._spawn(joining())

    # -- event handlers --------------------------------------------------------------------
    async def handle_ready(self, child: Handle | None, _: int) -> None:
        """A child sent READY=1: a worker joins the balancer's pool. One that started after
        the app on disk last failed to load shows that it loads again."""
        assert child is not None
        if child.role == "worker" and not self.stopping:
            self.ever_ready = True
            if self.load_error is not None:
                if child.started > self.load_failed_at:
                    self.load_recovered(child)
                else:
                    self.hold_recycling()  # began loading before the failure: old code
            slot = self._slot_of(child)
            if slot is not None:
                slot.crashes = 0
                self.start_join(slot)  # READY=1 waits for it (handle_joined)
        if child.role == "balancer":
            self._balancer_backoff = 0
        self._announce_ready()

    async def handle_joined(self, child: Handle | None, _: int) -> None:
        """The balancer answered a worker's join (start_join): the app may now be ready."""
        assert child is not None
        self._joining.discard(child.id)
        self._announce_ready()

    def _announce_ready(self) -> None:
        """READY=1 once the balancer and every worker are ready (then never again)."""
        if not self.started and not self.stopping and self._everyone_ready():
            self.started = True
            ports = self.supervisor.ports()
            websockets = len(self.websocket_slots())
            log.info("ready: %s with %d workers%s on %s", self.plan.name,
                     len(self.slots) - websockets,
                     f" and {websockets} WebSocket workers" if websockets else "",
                     ", ".join(ports))
            if ports:
                scheme, _sep, address = ports[0].partition("://")
                log.info("ready: try  curl %s://%s:%s/", scheme,
                         "localhost" if scheme == "https" else "127.0.0.1",
                         address.rpartition(":")[2])
            sd.notify("READY=1", f"STATUS={self.status_line()}")

    async def handle_exited(self, child: Handle | None, code: int) -> None:
        """A child exited: expected (stopping, replaced), recycled, crashed, or unloadable.
        While stopping, the balancer's exit is the workers' turn to stop."""
        assert child is not None
        if self.stopping:
            if child is self.balancer:
                self._stop_workers()
            return
        if child.retired:
            return
        if child.role == "balancer":
            self._balancer_backoff += 1
            delay = 0.0 if self._balancer_backoff == 1 else \
                min(MAX_BACKOFF, 0.1 * 2 ** (self._balancer_backoff - 2))
            log.error("the balancer %s; restarting it%s", exit_text(code),
                      f" in {delay:.1f} s" if delay else "")
            self.loop.call_later(delay, self.post, "balancer_back", None, 0)
            return
        slot = self._slot_of(child)
        if slot is not None:
            self.worker_gone(slot, child, code)

    async def handle_balancer_back(self, _: Handle | None, __: int) -> None:
        """Restart the balancer (after its back-off) and join the ready workers to it."""
        if self.stopping:
            return
        self.start_balancer()
        self._spawn(self._rejoin_all())

    def worker_gone(self, slot: WorkerSlot, child: Handle, code: int) -> None:
        """What follows a worker's exit (not asked for): a restart on its socket, after a
        back-off for a crash; or, when the app on disk cannot load, a vacant position
        (vacate). Exit 4 on a cold start stops the app: nothing has served, nothing would."""
        if code == ExitCode.NO_WEBSOCKETS and slot.websocket:
            self.no_websockets()
            return
        if code == ExitCode.APP_LOAD_ERROR:
            why = self.load_failed(child)
            if not self.ever_ready:
                log.error("worker %s cannot load the app (exit 4): %s; nothing has served "
                          "yet: stopping (its whole error is in its log above)", child.id, why)
                self.exit_code = ExitCode.APP_LOAD_ERROR
                self.begin_stop()
                return
            self.vacate(slot, f"worker {child.id} cannot load the app (exit 4): {why}")
            return
        if self.load_error is not None:
            self.vacate(slot, f"worker {child.id} {exit_text(code)}, and the app on disk "
                        f"fails to load: {self.load_error}; it is not restarted on its socket")
            return
        if code == ExitCode.RECYCLE:
            log.info("%s %s recycled (%s); starting its successor", slot.role, child.id,
                     self.count_recycle(child))
            self.start_worker(slot)
            return
        slot.crashes += 1
        self._count("worker_restarts")
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (slot.crashes - 1))
        log.warning("%s %s %s; restarting in %.1f s", slot.role, child.id, exit_text(code),
                    delay)
        self.loop.call_later(delay, self.post, "respawn", None, slot)

    async def handle_tick(self, _: Handle | None, __: int) -> None:
        """Once a second: kill workers that missed their watchdog, and look at the balancer's
        pool (check_pool, which posts what it finds as a "pool" event). Re-armed first, so
        that nothing here can stop it."""
        self.loop.call_later(HEALTH_INTERVAL, self.post, "tick", None, 0)
        if self.stopping:
            return
        if self.restart_watch is not None:
            self.restart_watch.recheck()  # a link on its path switched by a deploy
        now = self.loop.time()
        for slot in self.slots:
            child = slot.child
            if child is None or child.retired or not child.ready.done() or child.exited.done():
                continue
            if child.missed_watchdog(now):
                self.abort(child, f"missed its watchdog ({self.plan.watchdog_sec:.0f} s)")
        if self._checking is None or self._checking.done():
            self._checking = self.loop.create_task(self.check_pool())
        if self.started:
            sd.notify(f"STATUS={self.status_line()}")

    async def check_pool(self) -> None:
        """Ask the balancer for its pool and counters (short timeouts: never waited on by a
        handler); what it says is handled in the loop (handle_pool)."""
        try:
            stats = await self.client.query("stats")
            pool = await self.client.query("pool")
        except BalancerUnreachable as exc:
            log.debug("the balancer's pool: %s", exc)
            self._hung_seen = 0  # a restarted balancer starts a new list
            return
        self.post("pool", None, (stats, pool))

    async def handle_pool(self, _: Handle | None, seen: tuple[dict[str, Any], Any]) -> None:
        """The balancer's pool, reconciled with the workers (SPEC §4): a ready worker missing
        from it is joined again, one it holds that no longer runs is taken out, and a worker it
        reports hung (no answer in time, or out of rotation too long) is killed, which
        restarts it. Each gap is logged and counted."""
        stats, pool = seen
        if self.stopping or self.balancer is None or not self.balancer.ready.done():
            return
        self.count_requests(stats)
        self.reconcile_drain(str(stats.get("draining") or ""))
        health = self.health()
        if stats.get("health", "healthy") != health:  # a change, or a restarted balancer
            self._spawn(self.control("app-health", {"health": health}))
        hung: list[str] = stats.get("hung", [])
        if len(hung) < self._hung_seen:
            self._hung_seen = 0
        for worker_id in hung[self._hung_seen:]:
            hung_slot = next((s for s in self.slots if s.id == worker_id), None)
            victim = hung_slot.child if hung_slot is not None else None
            if victim is not None and not victim.exited.done():
                self.abort(victim, "reported hung by the balancer")
        self._hung_seen = len(hung)
        if (self.reloading is not None and not self.reloading.done()) or self._replacing:
            return  # workers join and leave meanwhile: the next look decides
        in_pool = {w["id"] for w in pool}
        running = set()
        for slot in self.slots:
            child = slot.child
            if child is None or child.exited.done():
                continue
            running.add(child.id)
            ready = child.ready.done() and not child.ready.cancelled()
            if ready and not child.retired and child.id not in in_pool | self._joining:
                log.warning("%s %s is ready but not in the balancer's pool: joining it "
                            "again", slot.role, child.id)
                self._count("pool_rejoins")
                self.start_join(slot)
        for worker_id in in_pool - running - self._leaving:
            log.warning("the balancer's pool holds worker %s, which does not run: taking it "
                        "out", worker_id)
            self._count("pool_strays")
            self._spawn(self.control("leave", {"id": worker_id}))

    def count_requests(self, stats: dict[str, Any]) -> None:
        """The balancer's count of requests answered, as the tick saw it (in order): a
        restarted balancer counts from 0 again, and what its predecessors answered is kept."""
        answered = int(stats.get("counters", {}).get("answered", 0))
        if answered < self._requests:
            self._requests_before += self._requests
        self._requests = answered

    def requests_total(self, stats: dict[str, Any]) -> int:
        """Requests answered since the app started, with the balancer's count in `stats`
        (fresher than the tick's, maybe of a restarted balancer the tick has not seen)."""
        answered = int(stats.get("counters", {}).get("answered", 0))
        before = self._requests_before + (self._requests if answered < self._requests else 0)
        return before + answered

    def abort(self, child: Handle, why: str) -> None:
        """SIGABRT (a stack dump, as systemd's watchdog does), then SIGKILL if it has not
        exited KILL_AFTER seconds later; its exit restarts it like a crash."""
        log.error("worker %s %s: killing it", child.id, why)
        child.abort()
        self.loop.call_later(KILL_AFTER, self.post, "kill_if_alive", child, 0)

    async def handle_kill_if_alive(self, child: Handle | None, _: int) -> None:
        """KILL_AFTER seconds after SIGABRT: a worker still there is frozen."""
        assert child is not None
        if not child.exited.done():
            log.error("worker %s still runs %.0f s after SIGABRT (frozen?): SIGKILL", child.id,
                      KILL_AFTER)
            child.kill()

    async def handle_restart_file(self, _: Handle | None, __: int) -> None:
        """The restart file was touched: a rolling restart (refused if one is running)."""
        log.info("%s touched: rolling restart", self.plan.restart_file)
        self.reload()

    def _watch_restart_file(self) -> None:
        path = self.plan.restart_file
        if path is None:
            return
        try:
            self.restart_watch = FileWatcher(path, lambda: self.post("restart_file", None, 0))
        except OSError as exc:
            log.warning("the restart file %s is not watched: %s", path, exc)
            return
        if path.parent.is_dir():
            log.info("touch %s for a rolling restart", path)
        else:  # watched all the same: the directory may come later
            log.debug("%s does not exist (yet): create it to restart by touching %s",
                      path.parent, path.name)

    async def handle_respawn(self, _: Handle | None, slot: WorkerSlot) -> None:
        """Restart the worker of `slot` on its socket after its back-off (or, if the app on
        disk failed to load meanwhile, leave the position vacant). A position replaced or
        scaled away meanwhile is no longer in `slots`: nothing to do."""
        if self.stopping or slot not in self.slots or slot.child is None:
            return
        if self.load_error is not None:
            self.vacate(slot, f"worker {slot.child.id} is not restarted on its socket: the app "
                        f"on disk fails to load: {self.load_error}")
            return
        self.start_worker(slot)

    # -- stopping --------------------------------------------------------------------------------
    async def handle_signal(self, _: Handle | None, signum: int) -> None:
        """SIGINT/SIGTERM: stop everything gracefully (begin_stop); SIGHUP: rolling restart."""
        if signum == signal.SIGHUP:
            self.reload()
            return
        self.begin_stop()

    def begin_stop(self) -> None:
        """Stop the app: no new connection is accepted, the balancer finishes its requests in
        flight, then the workers stop (handle_exited). Nothing waits here: the loop goes on
        until everything is gone, or stop_allowance() seconds passed (handle_stop_deadline)."""
        if self.stopping:
            return
        self.stopping = True
        sd.notify("STOPPING=1")
        log.info("stopping: the balancer finishes its requests, then the workers stop")
        for task in [self.reloading, *self._replacing]:
            if task is not None:
                task.cancel()
        for slot in self.slots:
            if slot.retry is not None:
                slot.retry.cancel()
        self.supervisor.close_ports()
        if self.balancer is not None and not self.balancer.exited.done():
            self.balancer.terminate()
        else:
            self._stop_workers()
        # The balancer may first wait out shutdown_delay (serving, its readiness failing).
        self.loop.call_later(self.stop_allowance(), self.post, "stop_deadline", None, 0)

    def stop_allowance(self) -> float:
        """How long a stop may take before what still runs is killed."""
        return self.plan.settings.shutdown_delay + self.plan.graceful_timeout + STOP_MARGIN

    def _stop_workers(self) -> None:
        for worker in self._children():
            if worker is not self.balancer:
                worker.terminate()

    async def handle_stop_deadline(self, _: Handle | None, __: int) -> None:
        """The stop took stop_allowance(): kill what still runs, and end."""
        left = [c for c in self._children() if not c.exited.done()]
        if left:
            log.warning("stopping: %s still running %.0f s after the stop began: killing",
                        ", ".join(f"{c.role} {c.id}" for c in left), self.stop_allowance())
            for child in left:
                child.kill()
        self._stop_ended = True

    async def handle_bus_lost(self, _: Handle | None, why: str) -> None:
        """The system bus closed (the systemd backend): systemd can no longer be asked or
        heard. While stopping (D-Bus stopped at shutdown), systemd stops the app's units
        itself (they are bound to rip@APP): the stop ends here. Otherwise the manager exits
        with a failure, and systemd restarts it (Restart=on-failure) with a clean slate."""
        self._stop_ended = True
        if self.stopping:
            log.info("the system bus closed (%s) while stopping: systemd stops the app's "
                     "units", why)
            return
        log.error("the system bus closed (%s): exiting, for systemd to restart the manager",
                  why)
        self.exit_code = ExitCode.FAILURE
        self.stopping = True
        sd.notify("STOPPING=1")

    def _count(self, event: str) -> None:
        """Tell the balancer, for its metrics (its answer is not waited for)."""
        task = self.loop.create_task(self.control("event", {"name": event}))
        self._counting.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._counting.discard)

    # -- helpers -------------------------------------------------------------------------------
    def new_slot(self, number: int, websocket: bool = False) -> WorkerSlot:
        """A fresh socket for worker position `number`: id "N" the first time, "N.K" after
        ("wsN", "wsN.K" for a WebSocket worker's)."""
        self._sockets_made += 1
        ident = f"ws{number}" if websocket else str(number)
        if ident in self._ids_used:  # ids are never reused: an old holder may still drain
            ident = f"{ident}.{self._sockets_made}"
        self._ids_used.add(ident)
        return WorkerSlot(number, ident, self.supervisor.worker_socket(ident), websocket)

    def http_slots(self) -> list[WorkerSlot]:
        """The positions of the workers that serve requests (those `workers` counts)."""
        return [s for s in self.slots if not s.websocket]

    def websocket_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.websocket]

    def _slot_of(self, child: Handle) -> WorkerSlot | None:
        return next((s for s in self.slots if s.child is child), None)

    def _everyone_ready(self) -> bool:
        """The balancer and every worker are ready (vacant positions aside, at least one)."""
        workers = [s.child for s in self.slots if s.child is not None]
        return bool(workers) and not self._joining and all(
            c is not None and c.ready.done() and not c.ready.cancelled()
            for c in [self.balancer, *workers])

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._counting.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._counting.discard)

    async def _rejoin_all(self) -> None:
        balancer = self.balancer
        assert balancer is not None
        await asyncio.wait([balancer.ready])
        if balancer.ready.cancelled() or self.stopping:
            return  # it exited before READY: its own exit event restarts it again
        if self.draining:  # before any worker joins: its readiness never passes meanwhile
            await self.tell_balancer_draining()
        for slot in self.slots:
            if slot.child is not None and slot.child.ready.done():
                self.start_join(slot)

    async def drain_and_leave(self, worker_id: str) -> None:
        """No new requests for the worker; its request in flight may take graceful_timeout
        (then the worker is stopped anyway), and it leaves the pool."""
        self._leaving.add(worker_id)
        try:
            timeout = self.plan.graceful_timeout
            await self.control("drain", {"id": worker_id, "timeout": timeout}, timeout + 5)
            await self.control("leave", {"id": worker_id})
        finally:
            self._leaving.discard(worker_id)

    async def control(self, command: str, body: dict[str, object],
                      timeout: float | None = None) -> dict[str, Any] | None:
        """A command to the balancer's control socket; failures are logged, not raised.
        Returns the reply ({"ok": …}), None if there was none."""
        if self.balancer is None:
            return None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.balancer.ready)
        try:
            reply = await (self.client.call(command, body) if timeout is None
                           else self.client.call(command, body, timeout))
        except BalancerUnreachable as exc:
            log.error("balancer control %s failed: %s", command, exc)
            return None
        if not reply.get("ok"):
            log.error("balancer control %s: %s", command, reply.get("error"))
        return reply

    # -- health ---------------------------------------------------------------------------------
    def ready_workers(self, slots: list[WorkerSlot] | None = None) -> int:
        """How many of `slots` (default: the workers serving requests) have a ready worker."""
        return sum(1 for s in (self.http_slots() if slots is None else slots)
                   if s.child is not None and s.child.ready.done()
                   and not s.child.ready.cancelled() and not s.child.exited.done())

    def health(self) -> str:
        """"healthy", or "degraded: 2/3 workers" and why when known: "…, the app on disk
        fails to load: SyntaxError: invalid syntax (/srv/app/app.py:3)"."""
        ready, total = self.ready_workers(), len(self.http_slots())
        websockets = self.websocket_slots()
        websockets_ready = self.ready_workers(websockets)
        if ready >= total and websockets_ready >= len(websockets):
            return "healthy"
        text = f"degraded: {ready}/{total} workers"
        if websockets_ready < len(websockets):
            text += f", {websockets_ready}/{len(websockets)} WebSocket workers"
        if self.load_error is not None:
            text += f", the app on disk fails to load: {self.load_error}"
        return text

    def status_line(self) -> str:
        """systemd's one-line status: "4/4 workers ready, v3, 12034 requests" (the count as
        of the last health tick), or "degraded: 3/4 workers, …" (health); "draining; …"
        first while the app is drained (ripctl drain)."""
        draining = self.drain_text()
        line = self._status_line()
        return f"{draining}; {line}" if draining else line

    def _status_line(self) -> str:
        health = self.health()
        requests = self._requests_before + self._requests
        if health != "healthy":
            return f"{health}; v{self.version}, {requests} requests"
        websockets = self.websocket_slots()
        line = (f"{self.ready_workers()}/{len(self.slots) - len(websockets)} workers ready, "
                + (f"WebSocket workers {self.ready_workers(websockets)}/{len(websockets)}, "
                   if websockets else "")
                + f"v{self.version}, {requests} requests")
        if self.load_error is not None:
            line += (f"; the app on disk fails to load: {self.load_error} (recycling waits "
                     "for a good deploy)")
        return line

    async def _cleanup(self) -> None:
        if self.restart_watch is not None:
            self.restart_watch.close()
        if self._checking is not None:
            self._checking.cancel()
        await self.client.close()
        await self.supervisor.close()
        with contextlib.suppress(OSError):  # only an empty one: nothing to keep
            self.state.rmdir()

