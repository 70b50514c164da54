"""The worker process's life cycle: sockets, signals, readiness, watchdog, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable

from ripsvc import compiled, logs, sd
from ripsvc.apploader import AppLoadError
from ripsvc.exitcodes import ExitCode
from ripsvc.sockets import BACKLOG, Bind, SocketError, describe
from ripsvc.worker.adapters import make_host
from ripsvc.worker.core import Worker, WorkerOptions

log = logs.get("worker")

STATUS_INTERVAL = 1.0


async def run(options: WorkerOptions, bind: Bind | None = None) -> ExitCode:
    """Serve until stopped; return the process's exit code."""
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
        sd.notify(f"STATUS=cannot load the app: {str(exc).splitlines()[0]}")
        return ExitCode.APP_LOAD_ERROR
    if worker.stopping.is_set():  # stopped while loading
        await worker.host.shutdown()
        return worker.exit_code

    factory: Callable[[], asyncio.Protocol]
    aio_server = None
    if worker.kind == "aiohttp":
        from ripsvc.worker.aiohttp_front import make_server

        aio_server = factory = make_server(worker)
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

    log.info("serving %s (%s) on %s", options.app, worker.kind,
             ", ".join(describe(s) for s in sockets))
    compiled.log_state(log)
    sd.notify("READY=1", f"STATUS={worker.status_line()}", f"MAINPID={os.getpid()}")
    if bind is not None:
        log.info("ready: try  %s", _curl_hint(sockets[-1]))
    stop_watchdog = sd.start_watchdog(loop)
    stop_status = _start_status(worker)

    await worker.stopping.wait()
    for server in servers:
        server.close()
    try:
        await asyncio.wait_for(worker.drained.wait(), options.graceful_timeout)
    except TimeoutError:
        log.warning("the request in flight did not finish within %.1f s; stopping anyway",
                    options.graceful_timeout)
    stop_watchdog()
    stop_status()
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


def _curl_hint(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"curl --unix-socket {sock.getsockname()} http://localhost/"
    return f"curl http://{describe(sock)}/"


def _start_status(worker: Worker) -> Callable[[], None]:
    """STATUS= whenever the worker's one-line summary changes (checked every few seconds);
    returns a function that stops it."""
    loop = worker.loop
    if "NOTIFY_SOCKET" not in os.environ:
        return lambda: None
    last = [""]
    pending: list[asyncio.TimerHandle] = []

    def status() -> None:
        line = worker.status_line()
        if line != last[0]:
            last[0] = line
            sd.notify(f"STATUS={line}")
        pending[0] = loop.call_later(STATUS_INTERVAL, status)

    pending.append(loop.call_later(STATUS_INTERVAL, status))
    return lambda: pending[0].cancel()
