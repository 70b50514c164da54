"""The manager: N workers behind a balancer, rolling restarts, scaling, health.

One loop (STYLE.md): signals, process events, control commands and a health tick are put on
one queue and each is handled by a `handle_<event>` method, in order. Processes and sockets
come from a supervisor backend (`supervisor.py`): `embedded.py` and `systemd.py`; the
logic in this module does not change with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ripsvc import edge, hosts, logs, paths, sd
from ripsvc.control import CommandError
from ripsvc.exitcodes import ExitCode
from ripsvc.manager.balancer_client import BalancerClient, BalancerUnreachable
from ripsvc.manager.control import serve_control
from ripsvc.manager.hosts_tls import HostsAndTLS
from ripsvc.manager.supervisor import Handle, Post, ServePlan, Supervisor
from ripsvc.manager.watch import FileWatcher

log = logs.get("manager")

MAX_BACKOFF = 10.0
HEALTH_INTERVAL = 1.0
#: A worker sent SIGABRT (hung, or missed its watchdog) that has not exited this long after is
#: frozen (SIGSTOP, stuck in the kernel): SIGKILL.
KILL_AFTER = 5.0


class WorkerSlot:
    """A worker position: its socket, and its id in the balancer's pool, outlive the processes
    that serve it (a crashed or recycled worker is restarted on the same socket and id)."""

    def __init__(self, number: int, ident: str, path: Path) -> None:
        self.number = number
        self.id = ident
        self.path = path
        self.child: Handle | None = None
        self.crashes = 0


class Manager(HostsAndTLS):
    """The manager's loop, its workers and rolling restarts; the edge's commands (certificate,
    host registry) are in hosts_tls.py."""

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
        self.balancer: Handle | None = None
        self.stopping = False
        self.exit_code = ExitCode.OK
        self.started = False
        self.reloading: asyncio.Task[str | None] | None = None
        self._sockets_made = 0
        self._hung_seen = 0
        self._requests = 0
        self._replacing: set[asyncio.Task[str | None]] = set()
        self._counting: set[asyncio.Task[Any]] = set()
        self._ids_used: set[str] = set()
        self._leaving: set[str] = set()  # worker ids being drained out of the pool
        self.restart_watch: FileWatcher | None = None
        self.state = plan.state_directory
        self.hosts = hosts.Registry(plan.hosts)
        self.tls = any(bind.tls for bind in plan.listen)

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
            self._watch_restart_file()
            self.loop.call_later(HEALTH_INTERVAL, self.post, "tick", None, 0)
            stop_watchdog = sd.start_watchdog(self.loop)
            while not (self.stopping and self._all_gone()):
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
        children = [s.child for s in self.slots] + [self.balancer]
        return all(c is None or c.exited.done() for c in children)

    # -- starting ----------------------------------------------------------------------------
    def start_balancer(self) -> None:
        self.balancer = self.supervisor.start_balancer()

    def start_worker(self, slot: WorkerSlot) -> Handle:
        slot.child = self.supervisor.start_worker(slot.id, slot.path)
        slot.child.version = self.version
        return slot.child

    # -- event handlers --------------------------------------------------------------------
    async def handle_ready(self, child: Handle | None, _: int) -> None:
        """A child sent READY=1: a worker joins the balancer's pool."""
        assert child is not None
        if child.role == "worker" and not self.stopping:
            slot = self._slot_of(child)
            if slot is not None:
                slot.crashes = 0
                await self.control("join", {"id": child.id, "socket": str(slot.path),
                                            "version": str(child.version)})
        if not self.started and self._everyone_ready():
            self.started = True
            ports = self.supervisor.ports()
            log.info("ready: %s with %d workers on %s", self.plan.name, len(self.slots),
                     ", ".join(ports))
            if ports:
                scheme, _sep, address = ports[0].partition("://")
                log.info("ready: try  curl %s://%s:%s/", scheme,
                         "localhost" if scheme == "https" else "127.0.0.1",
                         address.rpartition(":")[2])
            sd.notify("READY=1", f"STATUS={self.status_line()}")

    async def handle_exited(self, child: Handle | None, code: int) -> None:
        """A child exited: expected (stopping, replaced), recycled, crashed, or unloadable."""
        assert child is not None
        if self.stopping or child.retired:
            return
        if child.role == "balancer":
            log.error("the balancer exited with %s; restarting it", code)
            self.start_balancer()
            await self._rejoin_all()
            return
        slot = self._slot_of(child)
        if slot is None:
            return
        if code == ExitCode.APP_LOAD_ERROR:
            log.error("worker %s cannot load the app (exit %d): stopping; see its error above",
                      child.id, code)
            self.exit_code = ExitCode.APP_LOAD_ERROR
            await self.handle_signal(None, signal.SIGTERM)
            return
        if code == ExitCode.RECYCLE:
            log.info("worker %s recycled; starting its successor", child.id)
            self.start_worker(slot)
            return
        slot.crashes += 1
        self._count("worker_restarts")
        delay = min(MAX_BACKOFF, 0.1 * 2 ** (slot.crashes - 1))
        log.warning("worker %s exited with %s; restarting in %.1f s", child.id, code, delay)
        self.loop.call_later(delay, self.post, "respawn", None, slot.number)

    async def handle_tick(self, _: Handle | None, __: int) -> None:
        """Once a second: kill workers that missed their watchdog, and look at the balancer's
        pool (check_pool, which posts what it finds as a "pool" event). Re-armed first, so
        that nothing here can stop it."""
        self.loop.call_later(HEALTH_INTERVAL, self.post, "tick", None, 0)
        if self.stopping:
            return
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
        self._requests = int(stats.get("counters", {}).get("answered", self._requests))
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
            if ready and not child.retired and child.id not in in_pool:
                log.warning("worker %s is ready but not in the balancer's pool: joining it "
                            "again", child.id)
                self._count("pool_rejoins")
                await self.control("join", {"id": child.id, "socket": str(slot.path),
                                            "version": str(child.version)})
        for worker_id in in_pool - running - self._leaving:
            log.warning("the balancer's pool holds worker %s, which does not run: taking it "
                        "out", worker_id)
            self._count("pool_strays")
            await self.control("leave", {"id": worker_id})

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
        if not path.parent.is_dir():
            log.info("%s does not exist: create it to restart by touching %s", path.parent,
                     path.name)
            return
        try:
            self.restart_watch = FileWatcher(path, lambda: self.post("restart_file", None, 0))
        except OSError as exc:
            log.warning("the restart file %s is not watched: %s", path, exc)
            return
        log.info("touch %s for a rolling restart", path)

    async def handle_respawn(self, _: Handle | None, number: int) -> None:
        """Restart the worker of slot `number` after its back-off."""
        if not self.stopping:
            self.start_worker(self.slots[number - 1])

    async def handle_signal(self, _: Handle | None, signum: int) -> None:
        """SIGINT/SIGTERM: stop everything gracefully; SIGHUP: rolling restart."""
        if signum == signal.SIGHUP:
            self.reload()
            return
        if self.stopping:
            return
        self.stopping = True
        sd.notify("STOPPING=1")
        log.info("stopping: the balancer finishes its requests, then the workers stop")
        if self.reloading is not None:
            self.reloading.cancel()
        if self.balancer is not None:
            self.balancer.terminate()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.balancer.exited)
        for slot in self.slots:
            if slot.child is not None:
                slot.child.terminate()

    def _count(self, event: str) -> None:
        """Tell the balancer, for its metrics (its answer is not waited for)."""
        task = self.loop.create_task(self.control("event", {"name": event}))
        self._counting.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._counting.discard)

    # -- rolling restart -----------------------------------------------------------------------
    def reload(self) -> asyncio.Task[str | None] | None:
        """Start a rolling restart; None if one is already running (it is not queued)."""
        if self.reloading is not None and not self.reloading.done():
            log.warning("a rolling restart is already in progress; this one is refused")
            return None
        sd.notify("RELOADING=1")
        self.reloading = self.loop.create_task(self._rolling_restart())
        self.reloading.add_done_callback(
            lambda _: sd.notify("READY=1", f"STATUS={self.status_line()}"))
        return self.reloading

    async def _rolling_restart(self) -> str | None:
        """Each worker in turn is replaced (see replace). Returns None when done, or why it
        stopped (the old workers keep serving)."""
        if self._replacing:  # recycling hand-offs under way finish first
            await asyncio.wait(set(self._replacing))
        if self.tls:  # a renewed certificate comes with the new code
            why = await self.reload_certificate()
            if why is not None:
                return why
        self._count("reloads")
        self.version += 1
        log.info("rolling restart of %d workers to version %d", len(self.slots), self.version)
        for slot in list(self.slots):
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
        fresh = self.new_slot(slot.number)
        child = self.start_worker(fresh)
        either: list[asyncio.Future[Any]] = [child.ready, child.exited]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not child.ready.done() or child.ready.cancelled():
            self.supervisor.release_socket(fresh.path)
            if old is not None:
                old.retired = False
                if old.exited.done() and not self.stopping:  # it left meanwhile
                    self.start_worker(slot)
            return (f"worker {child.id} exited with {child.exited.result()} before READY; "
                    "the old workers keep serving")
        await self.control("join", {"id": child.id, "socket": str(fresh.path),
                                    "version": str(child.version)})
        if slot in self.slots:
            self.slots[self.slots.index(slot)] = fresh
        if old is not None:
            await self.drain_and_leave(slot.id)
            old.terminate()
            await old.exited
        self.supervisor.release_socket(slot.path)
        return None

    async def handle_recycle_soon(self, child: Handle | None, _: int) -> None:
        """A worker reached a recycling limit and waits for a successor (--recycle-handoff):
        replace it first, so capacity never dips. During a rolling restart it is left alone:
        the restart replaces it anyway, and its hand-off timeout bounds the wait."""
        assert child is not None
        slot = self._slot_of(child)
        if slot is None or child.retired or self.stopping:
            return  # retired: a rolling restart or another hand-off is replacing it
        if self.reloading is not None and not self.reloading.done():
            return
        log.info("worker %s asks to be recycled: starting its successor first", child.id)
        task = self.loop.create_task(self.replace(slot))
        self._replacing.add(task)
        task.add_done_callback(self._replaced)

    def _replaced(self, task: asyncio.Task[str | None]) -> None:
        self._replacing.discard(task)
        if not task.cancelled() and task.result() is not None:
            log.error("recycling hand-off failed: %s", task.result())

    # -- scaling -------------------------------------------------------------------------------
    async def scale(self, workers: int) -> None:
        """Start workers up to `workers`, or drain and stop the highest-numbered ones."""
        while len(self.slots) < workers:
            number = max((s.number for s in self.slots), default=0) + 1
            slot = self.new_slot(number)
            self.slots.append(slot)
            self.start_worker(slot)
        while len(self.slots) > workers:
            slot = self.slots.pop()
            child = slot.child
            if child is not None:
                child.retired = True
                await self.drain_and_leave(child.id)
                child.terminate()
                await child.exited
            self.supervisor.release_socket(slot.path)

    # -- helpers -------------------------------------------------------------------------------
    def new_slot(self, number: int) -> WorkerSlot:
        """A fresh socket for worker position `number`: id "N" the first time, "N.K" after."""
        self._sockets_made += 1
        ident = str(number)
        if ident in self._ids_used:  # ids are never reused: an old holder may still drain
            ident = f"{number}.{self._sockets_made}"
        self._ids_used.add(ident)
        return WorkerSlot(number, ident, self.supervisor.worker_socket(ident))

    def _slot_of(self, child: Handle) -> WorkerSlot | None:
        return next((s for s in self.slots if s.child is child), None)

    def _everyone_ready(self) -> bool:
        children = [s.child for s in self.slots] + [self.balancer]
        return all(c is not None and c.ready.done() and not c.ready.cancelled()
                   for c in children)

    async def _rejoin_all(self) -> None:
        assert self.balancer is not None
        await asyncio.wait([self.balancer.ready])
        if self.balancer.ready.cancelled():
            return  # it exited before READY: its own exit event restarts it again
        for slot in self.slots:
            if slot.child is not None and slot.child.ready.done():
                await self.control("join", {"id": slot.child.id, "socket": str(slot.path),
                                            "version": str(slot.child.version)})

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

    def status_line(self) -> str:
        """systemd's one-line status: "4/4 workers ready, v3, 12034 requests" (the count as
        of the last health tick)."""
        ready = sum(1 for s in self.slots if s.child is not None and s.child.ready.done()
                    and not s.child.ready.cancelled() and not s.child.exited.done())
        return (f"{ready}/{len(self.slots)} workers ready, v{self.version}, "
                f"{self._requests} requests")

    async def _cleanup(self) -> None:
        if self.restart_watch is not None:
            self.restart_watch.close()
        if self._checking is not None:
            self._checking.cancel()
        await self.client.close()
        await self.supervisor.close()
