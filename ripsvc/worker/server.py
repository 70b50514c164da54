"""The worker process's life cycle: sockets, signals, readiness, watchdog, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import socket
import traceback
from collections.abc import Callable

from ripsvc import compiled, logs, sd
from ripsvc.apploader import AppLoadError
from ripsvc.exitcodes import APP_LOAD_STATUS, ExitCode
from ripsvc.sockets import BACKLOG, Bind, SocketError, describe
from ripsvc.worker.adapters import make_host
from ripsvc.worker.core import Worker, WorkerOptions
from ripsvc.worker.held import HeldLoop

log = logs.get("worker")

STATUS_INTERVAL = 1.0


async def run(options: WorkerOptions, bind: Bind | None = None) -> ExitCode:
    """Serve until stopped; return the process's exit code."""
    # A worker killed as hung gets SIGABRT first (from the manager, or systemd's watchdog):
    # it then writes every thread's Python stack to stderr, the journal under systemd, so
    # that the operator sees where it hung, as uWSGI's harakiri does.
    faulthandler.enable(all_threads=True)
    loop = asyncio.get_running_loop()
    worker = Worker(options, loop, make_host)
    sockets = list(sd.listen_sockets().values())
    created_path = None
    if bind is not None:
        sockets.append(bind.open())
        created_path = bind.path
    if not sockets:
        raise SocketError("no listening socket: none passed by socket activation "
                          "(LISTEN_FDS) and no --bind given")
    stop = worker.begin_stop
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, ExitCode.OK, f"{signal.Signals(signum).name}")

    try:
        await worker.load()
    except AppLoadError as exc:
        log.error("cannot load the app %s: %s", options.app, exc)
        # The manager reads this line (systemd keeps it as the unit's StatusText): it is what
        # `ripctl reload`, `ripctl status` and the manager's journal say about the failure.
        sd.notify(f"STATUS={APP_LOAD_STATUS}{load_error_summary(exc)}")
        return ExitCode.APP_LOAD_ERROR
    if worker.stopping.is_set():  # stopped while loading
        await worker.host.shutdown()
        return worker.exit_code

    factory: Callable[[], asyncio.Protocol]
    aio_server = None
    hub = None
    if options.websocket and worker.kind == "wsgi":
        # Expected for every WSGI app (websocket_workers defaults to 1): said, not an error.
        log.info("the app is a WSGI app: no WebSockets to serve (exit %d)",
                 ExitCode.NO_WEBSOCKETS)
        sd.notify("STATUS=the app has no WebSockets (WSGI)")
        await worker.host.shutdown()
        return ExitCode.NO_WEBSOCKETS
    if options.websocket and worker.kind == "asgi":
        from ripsvc.worker.websocket import Hub

        hub = worker.websockets = Hub(worker, options.websocket_limits)
        factory = hub.factory
        hub.start()
    elif worker.kind == "aiohttp":
        from ripsvc.worker.aiohttp_front import make_server

        aio_server = factory = make_server(worker)
        if options.websocket:  # the balancer's hand-over channels, told apart from WebSockets
            from ripsvc.worker.websocket import AiohttpHub

            aio_hub = worker.websockets = AiohttpHub(worker, aio_server)
            factory = aio_hub.factory
    else:
        from ripsvc.worker.http import HttpConnection

        def factory() -> asyncio.Protocol:
            return HttpConnection(worker)

    servers = worker.servers
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            servers.append(await loop.create_unix_server(factory, sock=sock, backlog=BACKLOG))
        else:
            servers.append(await loop.create_server(factory, sock=sock, backlog=BACKLOG))

    log.info("serving %s (%s%s) on %s", options.app, worker.kind,
             ", WebSockets" if options.websocket else "",
             ", ".join(describe(s) for s in sockets))
    compiled.log_state(log)
    sd.notify("READY=1", f"STATUS={worker.status_line()}", f"MAINPID={os.getpid()}")
    if bind is not None:
        log.info("ready: try  %s", _curl_hint(sockets[-1]))
    stop_watchdog = sd.start_watchdog(loop)
    report_status = _status_reporter(worker)
    stop_status = _start_status(loop, report_status)
    held = None
    if worker.kind == "wsgi":  # its app holds the loop while it runs (worker/wsgi.py)
        held = HeldLoop(worker, report_status, sd.watchdog_interval(),
                        options.graceful_timeout)
        held.start()

    await worker.stopping.wait()
    for server in servers:
        server.close()
    if hub is not None:
        await hub.stop(options.graceful_timeout)
    elif options.websocket:  # aiohttp: its own server ends its WebSockets (on_shutdown)
        assert aio_server is not None
        await aio_server.shutdown(options.graceful_timeout)
    else:
        try:
            await asyncio.wait_for(worker.drained.wait(), options.graceful_timeout)
        except TimeoutError:
            log.warning("the request in flight did not finish within %.1f s; stopping anyway",
                        options.graceful_timeout)
    stop_watchdog()
    stop_status()
    if held is not None:
        held.stop()
    if aio_server is not None:
        await aio_server.shutdown(1.0)
    for conn in list(worker.connections):
        conn.transport.close()
    await worker.host.shutdown()
    if created_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(created_path)
    log.info("stopped after %d requests (exit %s)", worker.served, worker.exit_code.name)
    return worker.exit_code


def load_error_summary(exc: AppLoadError) -> str:
    """One line for an operator: the exception and where it was raised, e.g.
    "SyntaxError: invalid syntax (/srv/shop/app.py:3)"; the whole traceback is in the log."""
    cause = exc.__cause__
    if cause is None:  # our own finding (no such module, no such attribute …): its first line
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(cause, SyntaxError) and cause.filename:
        where = f"{cause.filename}:{cause.lineno}"
        text = f"{type(cause).__name__}: {cause.msg}"
    else:
        frames = traceback.extract_tb(cause.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        message = str(cause).strip().splitlines()
        text = type(cause).__name__ + (f": {message[0]}" if message else "")
    if len(text) > 200:
        text = text[:199] + "…"
    return f"{text} ({where})" if where else text


def _curl_hint(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"curl --unix-socket {sock.getsockname()} http://localhost/"
    return f"curl http://{describe(sock)}/"


def _status_reporter(worker: Worker) -> Callable[[], None]:
    """A function that sends STATUS= when the worker's one-line summary changed (from the loop,
    or from the held-loop thread)."""
    last = [""]

    def report() -> None:
        line = worker.status_line()
        if line != last[0]:
            last[0] = line
            sd.notify(f"STATUS={line}")

    return report


def _start_status(loop: asyncio.AbstractEventLoop, report: Callable[[], None]
                  ) -> Callable[[], None]:
    """STATUS= whenever the worker's summary changes (checked every few seconds); returns a
    function that stops it."""
    if "NOTIFY_SOCKET" not in os.environ:
        return lambda: None
    pending: list[asyncio.TimerHandle] = []

    def status() -> None:
        report()
        pending[0] = loop.call_later(STATUS_INTERVAL, status)

    pending.append(loop.call_later(STATUS_INTERVAL, status))
    return lambda: pending[0].cancel()
