"""The worker's state: its app, the one-request gate, counters, recycling and module reload.

It imports none of the modules that serve requests (http, asgi, wsgi, aiohttp_front), which
refer to it for their types: the adapter of the app's kind is given by server.py (adapters.py),
and the connections are whatever has the Connection methods.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ripsvc import logs, memory, sd
from ripsvc.apploader import AppLoadError, AppSpec, detect_kind, import_app
from ripsvc.exitcodes import ExitCode
from ripsvc.recycle import HOLD_SIGNAL, RELEASE_SIGNAL, RecyclePolicy, reason_text
from ripsvc.settings import DEFAULTS
from ripsvc.worker.reloader import ModuleWatcher, SourceOnlyFinder

if TYPE_CHECKING:
    from ripsvc.settings import Settings

log = logs.get("worker")

#: Released workers whose limits passed while held recycle within this many seconds, each at a
#: random moment, so that they do not all leave at once.
RELEASE_SPREAD = 5.0
#: With max_rss, the worker's memory is read after a request at most this often (a read costs
#: about 1 µs, a request about 20 µs of the worker's CPU): a busy worker is measured ten times
#: a second, a quiet one after each request. A request that ended within the interval after
#: the last read is measured once the interval is over, by a timer if the worker is idle by then.
MEMORY_INTERVAL = 0.1


@dataclass(frozen=True)
class WebSocketLimits:
    """A WebSocket worker's limits (worker/websocket.py); the settings websocket_*."""

    connections: int = DEFAULTS.websocket_connections  # at once; more are refused (503)
    max_message: int = DEFAULTS.websocket_max_message  # bytes; a larger one closes with 1009
    ping_interval: float = DEFAULTS.websocket_ping  # a ping after this long silent (0: never)
    ping_timeout: float = DEFAULTS.websocket_ping  # no answer within this long: closed (1011)


@dataclass(frozen=True)
class WorkerOptions:
    """What the worker's logic reads. The options that are settings take their default from
    settings.py (DEFAULTS) and their value from the worker's command line (from_settings)."""

    app: AppSpec
    name: str = "app"
    worker_id: str = "0"
    reload: str = DEFAULTS.reload
    recycle: RecyclePolicy = DEFAULTS.recycle
    recycle_jitter: float = DEFAULTS.recycle_jitter
    max_rss: int = DEFAULTS.max_rss
    graceful_timeout: float = DEFAULTS.graceful_timeout
    max_body: int = DEFAULTS.max_body
    reload_interval: float = 0.1  # not a setting
    #: Announce a reached recycling limit (sd_notify RIP_RECYCLE=1) and keep serving until
    #: stopped, at most this long, so that a supervisor can start a successor first (0: off).
    recycle_handoff: float = 0.0
    #: A WebSocket worker: many WebSockets at once, no HTTP requests (worker/websocket.py).
    websocket: bool = False
    websocket_limits: WebSocketLimits = WebSocketLimits()

    @classmethod
    def from_settings(cls, settings: Settings, app: AppSpec, *, name: str = "app",
                      worker_id: str = "0", recycle_handoff: float = 0.0,
                      websocket: bool = False) -> WorkerOptions:
        """The options for `settings` (those a worker receives: settings.role_fields), with
        the worker's own options that are not settings."""
        s = settings
        limits = WebSocketLimits(s.websocket_connections, s.websocket_max_message,
                                 s.websocket_ping, s.websocket_ping)
        return cls(app=app, name=name, worker_id=worker_id, reload=s.reload,
                   recycle=s.recycle, recycle_jitter=s.recycle_jitter, max_rss=s.max_rss,
                   graceful_timeout=s.graceful_timeout, max_body=s.max_body,
                   recycle_handoff=recycle_handoff, websocket=websocket,
                   websocket_limits=limits)


class AppHost(Protocol):
    kind: str

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...


#: The adapter for an app of a kind ("asgi", "wsgi", "aiohttp"): worker/adapters.py.
HostFactory = Callable[[str, Any], AppHost]


class Connection(Protocol):
    """A client connection of the worker (http.HttpConnection)."""

    transport: asyncio.Transport

    def close_if_idle(self) -> None: ...


class Gate:
    """At most one request in flight across all of the worker's connections."""

    __slots__ = ("busy",)

    def __init__(self) -> None:
        self.busy = False

    def acquire(self) -> bool:
        if self.busy:
            return False
        self.busy = True
        return True

    def release(self) -> None:
        self.busy = False


class StartupFailed(AppLoadError):
    pass


class Worker:
    host: Any  # AsgiHost | WsgiHost | AiohttpHost: adapters differ in their handle() signature

    def __init__(self, options: WorkerOptions, loop: asyncio.AbstractEventLoop,
                 make_host: HostFactory) -> None:
        self.options = options
        self.loop = loop
        self.make_host = make_host
        self.policy = options.recycle.with_jitter(options.recycle_jitter)
        self.gate = Gate()
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.accepting = True
        self.exit_code = ExitCode.OK
        self.stopping = asyncio.Event()  # no new requests from now on
        self.drained = asyncio.Event()  # stopping, and no request in flight
        self.served = 0
        self.reloads = 0
        self.started = time.monotonic()
        self.watcher: ModuleWatcher | None = None
        if options.reload == "module":
            SourceOnlyFinder(options.app.directory).install()
            self.watcher = ModuleWatcher(options.app.directory, options.reload_interval)
        self._date_second = 0
        self._handoff: asyncio.TimerHandle | None = None
        self.websockets: Any = None  # a WebSocket worker's Hub (worker/websocket.py)
        #: A WSGI app runs on the loop's thread: while it does, a thread pings the watchdog
        #: (sd.start_watchdog), and signals wait (worker/wsgi.py).
        self.app_holds_loop = False
        self._date_header = b""
        # Recycling held by the manager (the app on disk cannot load): the limit reached
        # meanwhile, if any, waits here.
        self.recycling_held = False
        self._recycle_due: str | None = None
        self._released: asyncio.TimerHandle | None = None  # a released limit, due soon
        # max_rss, once load() found the worker below it (0: not checked); see memory_over.
        self.max_rss = 0
        self.rss_loaded = 0  # the resident memory right after loading the app
        self._meter: memory.RssMeter | None = None
        # A read may be done now (the interval since the last one is over), or was put off
        # (a request ended meanwhile): no clock is read per request (memory_over).
        self._rss_due = True
        self._rss_put_off = False
        self._rss_over = 0  # the resident memory found above max_rss (0: not yet)
        # Why it waits for a successor or stops: its STATUS= until it exits (status_line), so
        # that the supervisor reads the reason last (recycle.reason_of), not "idle".
        self.leaving = ""

    @property
    def kind(self) -> str:
        return str(self.host.kind)

    # -- loading -----------------------------------------------------------------------------
    async def load(self) -> None:
        """Import the app and run its startup; raise AppLoadError on any failure."""
        self.host = await self._start_host()
        if self.watcher is not None:
            self.watcher.snapshot()
        if self.policy.seconds and not self.options.websocket:
            # A WebSocket worker is not recycled by age: its WebSockets would all be cut at
            # once. It serves no requests to count either; rolling restarts replace it.
            self.loop.call_later(self.policy.seconds, self._age_limit)
        # Installed once the app is loaded (an app's own handler would be replaced anyway):
        # the manager signals only workers that are ready.
        self.loop.add_signal_handler(HOLD_SIGNAL, self.hold_recycling)
        self.loop.add_signal_handler(RELEASE_SIGNAL, self.release_recycling)
        if self.options.max_rss:
            self._watch_memory(self.options.max_rss)

    def _watch_memory(self, limit: int) -> None:
        """max_rss, checked after requests from now on, unless it cannot work here: said at
        start, never a silent fallback. A worker already above it with the app just loaded
        would recycle after every request, and so would each successor: rather than that loop,
        this worker serves without the limit and says why."""
        shown = f"max_rss {memory.mib(limit)}"
        if self.options.websocket:
            # Its memory follows the WebSockets it holds, not leaks of requests, and a recycle
            # would close every one of them at once (why it is not recycled by age either); a
            # WSGI app's (none) exits at once.
            if self.kind != "wsgi":
                log.info("%s does not apply to a WebSocket worker: it serves no requests, "
                         "and recycling it would close all of its WebSockets at once", shown)
            return
        try:
            meter = memory.RssMeter()
        except OSError as exc:
            log.error("%s is off: this worker cannot read its resident memory (%s)", shown, exc)
            return
        try:
            rss = meter.read()
        except (OSError, ValueError) as exc:
            meter.close()
            log.error("%s is off: this worker cannot read its resident memory (%s)", shown, exc)
            return
        if rss >= limit:
            meter.close()
            log.error("%s is off for this worker: it holds %s with the app just loaded, so it "
                      "would recycle after every request, and so would its successors; give "
                      "max_rss room above what the app needs (e.g. twice %s)", shown,
                      memory.mib(rss), memory.mib(rss))
            return
        self._meter = meter
        self.max_rss = limit
        self.rss_loaded = rss
        log.debug("%s: %s with the app loaded", shown, memory.mib(rss))

    def memory_over(self) -> bool:
        """Is the worker's resident memory above max_rss? Read at most every MEMORY_INTERVAL
        seconds: within the interval the read is put off (a flag, no clock per request) to
        when it is over (_memory_due). Once found above, it stays so (the worker is on its
        way out)."""
        if self._rss_over:
            return True
        if not self._rss_due:
            self._rss_put_off = True
            return False
        return self._read_memory()

    def _read_memory(self) -> bool:
        """Read the resident memory now; the next read is due MEMORY_INTERVAL later. A read
        that fails turns the check off, said once."""
        meter = self._meter
        if meter is None:
            return False
        self._rss_due = self._rss_put_off = False
        self.loop.call_later(MEMORY_INTERVAL, self._memory_due)
        try:
            rss = meter.read()
        except (OSError, ValueError) as exc:
            log.error("max_rss is off from now on: this worker cannot read its resident "
                      "memory (%s)", exc)
            self.max_rss = 0
            self._meter = None
            return False
        if rss > self.max_rss:
            self._rss_over = rss
            return True
        return False

    def _memory_due(self) -> None:
        """The interval after a read is over: the next request's end reads again, or, for a
        request that ended meanwhile, a read now if the worker is idle (one in flight is
        measured when it ends)."""
        self._rss_due = True
        if (self._rss_put_off and self.max_rss and self.accepting and not self.gate.busy
                and self._read_memory()):
            self._recycle_on_memory()

    def _recycle_on_memory(self) -> None:
        if self._recycle_due is not None or self._handoff is not None:
            return  # already on its way out, or held: said once
        rss, limit = self._rss_over, self.max_rss
        detail = (f"RSS {memory.mib(rss)} is above max_rss {memory.mib(limit)} after "
                  f"{self.served} requests ({memory.mib(self.rss_loaded)} with the app loaded)")
        self.recycle(reason_text("memory", detail),
                     {"RSS": str(rss), "MAX_RSS": str(limit)})

    async def _start_host(self) -> AppHost:
        spec = self.options.app
        app = import_app(spec)
        host = self.make_host(detect_kind(app, spec), app)
        try:
            await host.startup()
        except AppLoadError:
            raise
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc)).rstrip()
            raise StartupFailed(f"the app's startup failed:\n{tb}") from exc
        return host

    # -- requests ----------------------------------------------------------------------------
    @property
    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date_header

    async def before_request(self) -> None:
        if self.watcher is not None and self.watcher.due():
            await self.reload_modules()

    def last_request(self) -> bool:
        """Will the worker stop once the request in flight is done? Its response then says
        `Connection: close`, so that the balancer does not reuse a connection about to go."""
        if not self.accepting:
            return True
        if self.options.recycle_handoff or self.recycling_held:
            return False  # it keeps serving until its successor is in place
        policy = self.policy
        return (bool(policy.requests and self.served + 1 >= policy.requests)
                or bool(policy.reloads and self.reloads >= policy.reloads)
                or bool(self.max_rss and self.memory_over()))

    def request_finished(self) -> None:
        self.served += 1
        self.gate.release()
        policy = self.policy
        if not self.accepting:
            self.drained.set()
        elif policy.requests and self.served >= policy.requests:
            self.recycle(reason_text("requests", self.served))
        elif policy.reloads and self.reloads >= policy.reloads:
            self.recycle(reason_text("reloads", self.reloads))
        elif self.max_rss and self.memory_over():
            self._recycle_on_memory()

    def recycle(self, reason: str, fields: dict[str, str] | None = None) -> None:
        """A limit is reached: stop now, or with a hand-off, ask for a successor first; while
        recycling is held, wait for the release. `reason` begins with recycle.reason_text
        (the manager counts recycles by it); `fields`: journal fields of its log line."""
        if self.recycling_held:
            if self._recycle_due is None:
                self._recycle_due = reason
                log.warning("%s: held, since the app on disk cannot load; this worker keeps "
                            "serving until the next good deploy", reason, extra=fields)
            return
        if self._released is not None:
            return  # released with a limit passed: recycle() comes at its own moment
        handoff = self.options.recycle_handoff
        if not handoff:
            self.begin_stop(ExitCode.RECYCLE, reason, fields)
            return
        if self._handoff is not None:
            return
        log.info("%s: asking for a successor (serving meanwhile, at most %.0f s)", reason,
                 handoff, extra=fields)
        # STATUS= first: the supervisor reads why (recycle.reason_of) when RIP_RECYCLE=1 comes.
        self.leaving = f"{reason}; waiting for a successor"
        sd.notify(f"STATUS={self.leaving}", "RIP_RECYCLE=1")
        self._recycle_due = reason
        self._handoff = self.loop.call_later(handoff, self.begin_stop, ExitCode.RECYCLE,
                                             f"{reason}; no successor came")

    def hold_recycling(self) -> None:
        """HOLD_SIGNAL from the manager: the app on disk cannot load, so a successor would not
        start. Limits reached from now on wait, and so does a hand-off under way (its
        successor failed): the worker serves until released or replaced by a good deploy."""
        if self.recycling_held or not self.accepting:
            return
        self.recycling_held = True
        pending = self._handoff or self._released
        for timer in (self._handoff, self._released):
            if timer is not None:
                timer.cancel()
        self._handoff = self._released = None
        self.leaving = ""  # it no longer waits for a successor
        if pending is not None and self._recycle_due is not None:
            log.warning("%s: held, since the app on disk cannot load; this worker keeps "
                        "serving until the next good deploy", self._recycle_due)
        else:
            self._recycle_due = None
            log.info("recycling held: the app on disk cannot load; recycling limits wait for "
                     "the next good deploy")

    def release_recycling(self) -> None:
        """RELEASE_SIGNAL from the manager: the app on disk loads again. A limit passed while
        held recycles now, at a random moment within RELEASE_SPREAD seconds."""
        if not self.recycling_held:
            return
        self.recycling_held = False
        due = self._recycle_due
        if due is None:
            log.info("recycling released: the app on disk loads again")
            return
        delay = random.uniform(0, RELEASE_SPREAD)
        log.info("recycling released: the app on disk loads again; %s in %.1f s", due, delay)
        self._released = self.loop.call_later(delay, self._recycle_released)

    def _recycle_released(self) -> None:
        self._released = None
        reason, self._recycle_due = self._recycle_due, None
        if self.accepting and reason is not None:
            self.recycle(reason)

    # -- module reload -------------------------------------------------------------------------
    async def reload_modules(self) -> None:
        """Re-import the app if its source changed; a failed import keeps the old app serving."""
        watcher = self.watcher
        assert watcher is not None
        changed = watcher.changed()
        if not changed:
            return
        log.info("source changed (%s): reloading the app", ", ".join(sorted(changed)))
        old_modules = watcher.unload()
        try:
            host = await self._start_host()
        except AppLoadError as exc:
            watcher.restore(old_modules, watcher.app_modules())
            watcher.snapshot(extra=_files_in_error(exc))
            log.error("module reload failed; the previous code keeps serving:\n%s", exc)
            return
        old, self.host = self.host, host
        watcher.snapshot()
        self.reloads += 1
        sd.notify(f"STATUS={self.status_line()}")
        log.info("module reload %d done", self.reloads)
        await old.shutdown()

    # -- stopping ------------------------------------------------------------------------------
    def _age_limit(self) -> None:
        self.recycle(reason_text("age", self.policy.seconds))

    def begin_stop(self, code: ExitCode, reason: str,
                   fields: dict[str, str] | None = None) -> None:
        """Stop taking requests; the one in flight (if any) finishes first."""
        if not self.accepting:
            return
        for timer in (self._handoff, self._released):
            if timer is not None:
                timer.cancel()
        self.accepting = False
        self.exit_code = code
        # Stop accepting now, not when run() wakes up: a connection accepted meanwhile would
        # be refused, while one left in the socket's backlog goes to our successor.
        for server in self.servers:
            server.close()
        log.info("%s; stopping", reason, extra=fields)
        self.leaving = f"{reason}; stopping"
        sd.notify("STOPPING=1", f"STATUS={self.leaving}")
        for conn in list(self.connections):
            conn.close_if_idle()
        self.stopping.set()
        if not self.gate.busy:
            self.drained.set()

    def status_line(self) -> str:
        if self.leaving:
            return self.leaving
        if self.websockets is not None:
            return (f"{self.options.name} ({self.kind}): {self.websockets.open} WebSockets "
                    f"open, {self.websockets.opened} since start")
        state = "busy" if self.gate.busy else "idle"
        return (f"{self.options.name} ({self.kind}): {self.served} requests, "
                f"{self.reloads} reloads, {state}")


def _files_in_error(exc: BaseException) -> list[str]:
    """Source files named by an import error's traceback, so fixing any of them is noticed."""
    files: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SyntaxError) and current.filename:
            files.append(current.filename)
        files.extend(frame.filename for frame in traceback.extract_tb(current.__traceback__))
        current = current.__cause__ or current.__context__
    return [f for f in files if Path(f).is_file()]
