"""The systemd backend: the app's balancer and workers are units, driven over D-Bus.

The manager's logic (core.py) is the embedded mode's; only its processes differ. Each worker
is an instance `rip-worker@APP:ID` of a template with a per-instance socket unit; the balancer
is `rip-balancer@APP` on the ports of `rip-balancer@APP.socket` (rip-generator). Through
`org.freedesktop.systemd1` (dbus-fast, asyncio):
- StartUnit/StopUnit jobs, and JobRemoved to know when one finished; for Type=notify units
  "done" means READY=1 arrived. The signal may come before the call's reply, so one future per
  job path is created by whichever comes first.
- PropertiesChanged of each unit: an ActiveState leaving "active" is an exit. Its code is
  the ExecMainCode/ExecMainStatus of the Service interface's PropertiesChanged, which systemd
  sends just before the Unit interface's (by design, for atomic views): asked for afterwards,
  a restart triggered by the socket meanwhile may have reset it to 0. systemd restarts
  crashed and recycled workers itself (Restart=); the manager's StartUnit for the successor
  joins that restart.
- KillUnit for SIGABRT (a hung worker), SIGKILL, and the recycling hold and release.
- Jobs are started with mode "fail": every unit of the app is bound to rip@APP (BindsTo=),
  so a start that came in while rip@APP is being stopped must fail, not replace its stop job.
We subscribe before the first job, and never poll. When the bus closes (D-Bus stopped), the
jobs waited for fail at once and the manager is told ("bus_lost").

What differs from the embedded backend stays here: the balancer's command line is in its unit
(the generator wrote it with launch.balancer_args from the same app file; a unit older than
the file is said), systemd watches the workers' watchdog (WatchdogSec=), and a recycled worker
exits and is restarted on its socket by systemd (Restart=) rather than waiting for a successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from ripsvc import launch, logs, paths, units
from ripsvc.manager.supervisor import EXIT_UNKNOWN, Handle, Post, ServePlan
from ripsvc.sockets import Bind

log = logs.get("manager")

SD, SD_PATH = "org.freedesktop.systemd1", "/org/freedesktop/systemd1"
MANAGER, UNIT, SERVICE, SOCKET = (f"{SD}.Manager", f"{SD}.Unit", f"{SD}.Service",
                                  f"{SD}.Socket")
PROPERTIES = "org.freedesktop.DBus.Properties"
JOB_TIMEOUT = 180.0
CLD_EXITED = 1  # ExecMainCode: exited normally; otherwise killed by the signal in ExecMainStatus
EXIT_STATUS_WAIT = 0.5  # seconds to wait for a gone unit's ExecMainStatus to be sent


class SystemdError(RuntimeError):
    pass


class Systemd:
    """A small client of systemd's manager object, for one asyncio loop."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.jobs: dict[str, asyncio.Future[str]] = {}
        # unit object path → callback(interface, changed properties)
        self.watchers: dict[str, Callable[[str, dict[str, Any]], None]] = {}
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, address: str | None = None) -> Systemd:
        bus = await (MessageBus(bus_address=address) if address
                     else MessageBus(bus_type=BusType.SYSTEM)).connect()
        client = cls(bus)
        await client.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                          [f"type='signal',sender='{SD}',path='{SD_PATH}',"
                           f"interface='{MANAGER}',member='JobRemoved'"],
                          destination="org.freedesktop.DBus")
        await client.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                          [f"type='signal',sender='{SD}',interface='{PROPERTIES}',"
                           f"member='PropertiesChanged',path_namespace='{SD_PATH}/unit'"],
                          destination="org.freedesktop.DBus")
        await client.call(SD_PATH, MANAGER, "Subscribe")
        return client

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "JobRemoved" and msg.interface == MANAGER:
            _id, job, _unit, result = msg.body
            future = self._job(job)
            if not future.done():
                future.set_result(result)
        elif msg.member == "PropertiesChanged" and msg.path in self.watchers:
            interface, changed, _invalidated = msg.body
            self.watchers[msg.path](interface, {k: v.value for k, v in changed.items()})

    def _job(self, path: str) -> asyncio.Future[str]:
        if path not in self.jobs:
            self.jobs[path] = asyncio.get_running_loop().create_future()
        return self.jobs[path]

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, destination: str = SD) -> list[Any]:
        reply = await self.bus.call(Message(destination=destination, path=path,
                                            interface=interface, member=member,
                                            signature=signature, body=body or []))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"{member} {body or ''}: {reply.error_name}: {detail}")
        return list(reply.body)

    async def job(self, method: str, unit: str, mode: str = "replace") -> str:
        """StartUnit/StopUnit/RestartUnit; returns the job's result ("done", "failed", …)."""
        if not self.bus.connected:
            raise SystemdError(f"{method} {unit}: the system bus is closed")
        (path,) = await self.call(SD_PATH, MANAGER, method, "ss", [unit, mode])
        try:
            return await asyncio.wait_for(self._job(path), JOB_TIMEOUT)
        finally:
            self.jobs.pop(path, None)

    def fail_jobs(self, why: str) -> None:
        """The bus closed: no JobRemoved will come."""
        for future in self.jobs.values():
            if not future.done():
                future.set_exception(SystemdError(f"the system bus closed: {why}"))

    async def unit_path(self, unit: str) -> str:
        (path,) = await self.call(SD_PATH, MANAGER, "LoadUnit", "s", [unit])
        return str(path)

    async def get(self, path: str, interface: str, name: str) -> Any:
        (variant,) = await self.call(path, PROPERTIES, "Get", "ss", [interface, name])
        return variant.value

    async def kill(self, unit: str, who: str, signum: int) -> None:
        await self.call(SD_PATH, MANAGER, "KillUnit", "ssi", [unit, who, signum])

    async def reset_failed(self, unit: str) -> None:
        with contextlib.suppress(SystemdError):  # not loaded, or not failed
            await self.call(SD_PATH, MANAGER, "ResetFailedUnit", "s", [unit])

    async def units_matching(self, pattern: str) -> list[str]:
        (found,) = await self.call(SD_PATH, MANAGER, "ListUnitsByPatterns", "asas",
                                   [[], [pattern]])
        return [str(row[0]) for row in found]

    def close(self) -> None:
        self.bus.disconnect()


class UnitHandle(Handle):
    """One running unit of the app (the balancer or a worker), as the manager sees a process:
    ready once its start job is done; exited when its ActiveState leaves "active". Its
    watchdog is systemd's (WatchdogSec=): missed_watchdog() is never true here."""

    def __init__(self, backend: SystemdSupervisor, role: str, ident: str, unit: str) -> None:
        super().__init__(role, ident)
        self.backend = backend
        self.unit = unit
        self.restarting = False  # systemd was restarting it when we were asked to start it
        self.path = ""
        self._main_exit: tuple[int, int] | None = None  # ExecMainCode/Status of its exit
        self._exit_seen = asyncio.Event()  # _main_exit was sent

    async def start(self) -> None:
        sd = self.backend.sd
        try:
            self.path = await sd.unit_path(self.unit)
            sd.watchers[self.path] = self._changed
            if await sd.get(self.path, UNIT, "SubState") == "auto-restart":
                # systemd restarts it itself (Restart=): wait for that; a StartUnit now would
                # replace the restart that systemd counts (NRestarts) and paces (RestartSec=)
                self.restarting = True
                return
            result = await sd.job("StartUnit", self.unit, "fail")
            if result != "done":
                # "failed": the process exited before READY, which its exit says (the manager
                # logs it, once); anything else (a dependency, a timeout) is said here.
                (log.debug if result == "failed" else log.error)("%s: start job %s",
                                                                 self.unit, result)
                await self._exit(self._exit_code())
                return
            await self._ready()
        except (SystemdError, TimeoutError) as exc:
            log.error("%s: cannot start: %s", self.unit, exc)
            await self._exit(1)

    async def _ready(self) -> None:
        sd = self.backend.sd
        self.pid = int(await sd.get(self.path, SERVICE, "MainPID"))
        self.status = str(await sd.get(self.path, SERVICE, "StatusText"))
        if not self.ready.done() and not self.exited.done():
            self.ready.set_result(None)
            self.backend.post("ready", self, 0)

    def _changed(self, interface: str, changed: dict[str, Any]) -> None:
        if interface == SERVICE:
            # StatusText is kept when it is emptied: a worker's last words say why it exited.
            self.status = str(changed.get("StatusText") or self.status)
            self.pid = int(changed.get("MainPID", self.pid))
            if "ExecMainCode" in changed and "ExecMainStatus" in changed and \
                    int(changed["ExecMainCode"]) != 0:  # 0: no exit (yet, or reset by a start)
                self._main_exit = (int(changed["ExecMainCode"]),
                                   int(changed["ExecMainStatus"]))
                self._exit_seen.set()
            return
        state = changed.get("ActiveState")
        gone = state in ("inactive", "failed")
        if self.exited.done():
            return
        code = self._exit_code()
        if not self.ready.done():  # only a restart by systemd is watched before READY
            if self.restarting and state == "active":
                self.backend.spawn(self._ready())
            elif self.restarting and gone:
                self.backend.spawn(self._exit(code))
            return
        if gone or changed.get("SubState") == "auto-restart":
            self.backend.spawn(self._exit(code))

    def _exit_code(self) -> int | None:
        """The main process's exit as sent (None if not yet): its code, or minus the signal
        that killed it."""
        if self._main_exit is None:
            return None
        how, status = self._main_exit
        return status if how == CLD_EXITED else -status

    async def _exit(self, code: int | None = None) -> None:
        """The unit is gone (or its start job failed): its exit is posted with the main
        process's status, which systemd may send a little after the unit's state (waited
        for briefly) or not at all when it starts the unit again at once (a connection on its
        socket resets the status): then it is asked, and EXIT_UNKNOWN if lost."""
        if self.exited.done():
            return
        if code is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_seen.wait(), EXIT_STATUS_WAIT)
            code = self._exit_code()
        if code is None:
            sd = self.backend.sd
            try:
                how = int(await sd.get(self.path, SERVICE, "ExecMainCode"))
                status = int(await sd.get(self.path, SERVICE, "ExecMainStatus"))
                code = EXIT_UNKNOWN if how == 0 else status if how == CLD_EXITED else -status
            except SystemdError:
                code = EXIT_UNKNOWN
        if self.exited.done():
            return
        if self.backend.sd.watchers.get(self.path) == self._changed:
            del self.backend.sd.watchers[self.path]
        if not self.ready.done():
            self.ready.cancel()
        self.exited.set_result(code)
        self.backend.post("exited", self, code)

    def terminate(self) -> None:
        self.retired = True
        self.backend.spawn(self.backend.stop_unit(self.unit))

    def abort(self) -> None:
        """SIGABRT, as systemd's own watchdog does; Restart= brings the worker back."""
        self.backend.spawn(self.backend.sd.kill(self.unit, "main", signal.SIGABRT))

    def kill(self) -> None:
        self.backend.spawn(self.backend.sd.kill(self.unit, "all", signal.SIGKILL))

    def send(self, signum: int) -> None:
        self.backend.spawn(self.backend.sd.kill(self.unit, "main", signum))

    def __repr__(self) -> str:
        return f"{self.unit} (pid {self.pid})"


class SystemdSupervisor:
    """Supervisor (supervisor.py) whose processes are the app's units."""

    def __init__(self, plan: ServePlan, post: Post, config_dir: Path, python: str,
                 bus_address: str | None = None) -> None:
        self.plan = plan
        self.post = post
        self.settings = plan.settings
        self.name = plan.name
        self.python = python
        self.app_arg, self.directory = units.app_command(self.settings, config_dir)
        self.runtime = paths.system_app_dir(plan.name)  # rip@APP's RuntimeDirectory=
        self.bus_address = bus_address
        self.dropin_root = units.INSTANCE_DIR
        self._sd: Systemd | None = None
        self._ports: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus_watch: asyncio.Task[None] | None = None
        self._instances: dict[Path, str] = {}  # worker socket path → instance id

    @property
    def sd(self) -> Systemd:
        assert self._sd is not None, "open() first"
        return self._sd

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("systemd: %s", task.exception())

    async def open(self) -> None:
        """Connect and subscribe; stop what a previous manager of this app left behind."""
        self._sd = await Systemd.connect(self.bus_address)
        self._bus_watch = asyncio.get_running_loop().create_task(self._watch_bus())
        leftovers = await self.sd.units_matching(f"rip-worker@{self.name}:*")
        for unit in leftovers:
            log.warning("stopping %s, left by an earlier run", unit)
            await self.stop_unit(unit)
        for stale in self.dropin_root.glob(f"rip-worker@{self.name}:*.d"):
            self._remove_dropin(stale)
        socket_path = await self.sd.unit_path(f"rip-balancer@{self.name}.socket")
        listen = await self.sd.get(socket_path, SOCKET, "Listen")
        schemes = {str(bind.port): bind.scheme for bind in self.plan.listen}
        self._ports = [f"{schemes.get(str(address).rpartition(':')[2], 'http')}://{address}"
                       for _kind, address in listen]

    async def _watch_bus(self) -> None:
        # (typed here: some dbus-fast versions leave it untyped)
        disconnected: Callable[[], Awaitable[None]] = self.sd.bus.wait_for_disconnect
        try:
            await disconnected()
            why = "disconnected"
        except Exception as exc:  # how dbus-fast reports an unexpected end
            why = str(exc) or type(exc).__name__
        self.sd.fail_jobs(why)
        self.post("bus_lost", None, why)

    def ports(self) -> list[str]:
        return self._ports

    def close_ports(self) -> None:
        """Nothing to do: rip-balancer@APP.socket is bound to rip@APP (BindsTo=, PartOf=) and
        stops with it; the balancer closes its own copy on SIGTERM."""

    def binds(self) -> list[Bind]:
        return list(self.plan.listen)  # the socket unit's, as configured

    def start_balancer(self) -> UnitHandle:
        handle = UnitHandle(self, "balancer", "0", f"rip-balancer@{self.name}.service")
        self.spawn(self._start_balancer(handle))
        return handle

    async def _start_balancer(self, handle: UnitHandle) -> None:
        await self._check_balancer_command(handle.unit)
        await handle.start()

    async def _check_balancer_command(self, unit: str) -> None:
        """The balancer's command line is its unit's, which rip-generator wrote from the app
        file at the last daemon-reload: say so if the file has changed since."""
        expected = launch.balancer_args(self.settings, self.binds(), self.runtime,
                                        paths.system_state_dir(self.name))
        try:
            exec_start = await self.sd.get(await self.sd.unit_path(unit), SERVICE, "ExecStart")
        except SystemdError as exc:
            log.warning("%s: cannot read its command line: %s", unit, exc)
            return
        found = [list(command[1])[3:] for command in exec_start]  # after python -m MODULE
        if found != [expected]:
            log.warning("%s runs %s, but /etc/rip/%s.toml asks for %s: the units are older "
                        "than the app's file; run `systemctl daemon-reload`, then restart "
                        "rip@%s", unit, found, self.name, expected, self.name)

    def worker_socket(self, ident: str) -> Path:
        path = paths.worker_socket(self.name, ident)
        self._instances[path] = ident
        return path

    def release_socket(self, path: Path) -> None:
        ident = self._instances.pop(path, None)
        if ident is not None:
            self.spawn(self._release(ident))

    async def _release(self, ident: str) -> None:
        unit = units.worker_unit(self.name, ident)
        await self.stop_unit(f"{unit}.service")
        await self.stop_unit(f"{unit}.socket")
        for kind in ("service", "socket"):
            self._remove_dropin(self.dropin_root / f"{unit}.{kind}.d")

    def start_worker(self, ident: str, socket_path: Path, websocket: bool = False) -> UnitHandle:
        # The app made absolute for the unit's working directory; a recycled worker exits and
        # is restarted by systemd (no hand-off); its watchdog is the unit's WatchdogSec=.
        args = launch.worker_args(self.settings, self.app_arg, ident, handoff=False,
                                  websocket=websocket)
        dropins = units.worker_dropins(self.settings, ident, args, {}, self.python,
                                       self.directory, self.plan.watchdog_sec)
        for unit_file, text in dropins.items():
            target = self.dropin_root / f"{unit_file}.d" / units.DROPIN
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
        unit = units.worker_unit(self.name, ident)
        handle = UnitHandle(self, "worker", ident, f"{unit}.service")
        self.spawn(self._start_worker(handle))
        return handle

    async def _start_worker(self, handle: UnitHandle) -> None:
        await self.sd.reset_failed(handle.unit)  # a failed unit would refuse to start
        await handle.start()

    async def stop_unit(self, unit: str) -> None:
        try:
            await self.sd.job("StopUnit", unit)
        except SystemdError as exc:
            if "NoSuchUnit" not in str(exc):
                raise
        await self.sd.reset_failed(unit)

    @staticmethod
    def _remove_dropin(directory: Path) -> None:
        (directory / units.DROPIN).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()

    async def close(self) -> None:
        """Stop every unit of the app still running (a manager that exits takes its app
        down; PartOf= covers only `systemctl stop`), remove the drop-ins, disconnect."""
        if self._sd is None:
            return
        if self._bus_watch is not None:
            self._bus_watch.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        if self.sd.bus.connected:
            try:
                await self.stop_unit(f"rip-balancer@{self.name}.service")
                for unit in await self.sd.units_matching(f"rip-worker@{self.name}:*"):
                    await self.stop_unit(unit)
            except SystemdError as exc:
                log.error("stopping the app's units: %s", exc)
        for stale in self.dropin_root.glob(f"rip-worker@{self.name}:*.d"):
            self._remove_dropin(stale)
        self.sd.close()

