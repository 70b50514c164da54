"""The worker process's life cycle: sockets, signals, readiness, watchdog, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ripsvc import logs, sd
from ripsvc.apploader import AppLoadError
from ripsvc.exitcodes import ExitCode
from ripsvc.worker.core import Worker, WorkerOptions

log = logs.get("worker")

STATUS_INTERVAL = 1.0


class SocketError(RuntimeError):
    """No usable listening socket."""


@dataclass(frozen=True)
class Bind:
    """A listening address the worker creates itself (development; systemd passes sockets)."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Bind:
        if text.startswith("tcp:"):
            host, sep, port = text[4:].rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"{text!r}: expected tcp:HOST:PORT")
            return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))
        if not text:
            raise ValueError("empty socket path")
        return cls(path=text)

    def open(self) -> socket.socket:
        if self.path is not None:
            return _bind_unix(self.path)
        assert self.host is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        return sock


def _bind_unix(path: str) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
        else:
            raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1024)
    return sock


async def run(options: WorkerOptions, bind: Bind | None = None) -> ExitCode:
    """Serve until stopped; return the process's exit code."""
    loop = asyncio.get_running_loop()
    worker = Worker(options, loop)
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

    servers = []
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            servers.append(await loop.create_unix_server(factory, sock=sock))
        else:
            servers.append(await loop.create_server(factory, sock=sock))

    log.info("serving %s (%s) on %s", options.app, worker.kind,
             ", ".join(_describe(s) for s in sockets))
    sd.notify("READY=1", f"STATUS={worker.status_line()}", f"MAINPID={os.getpid()}")
    if bind is not None:
        log.info("ready: try  %s", _curl_hint(sockets[-1]))
    timers = _start_timers(worker)

    await worker.stopping.wait()
    for server in servers:
        server.close()
    try:
        await asyncio.wait_for(worker.drained.wait(), options.graceful_timeout)
    except TimeoutError:
        log.warning("the request in flight did not finish within %.1f s; stopping anyway",
                    options.graceful_timeout)
    for timer in timers:
        timer.cancel()
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


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _curl_hint(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"curl --unix-socket {sock.getsockname()} http://localhost/"
    return f"curl http://{_describe(sock)}/"


def _start_timers(worker: Worker) -> list[asyncio.TimerHandle]:
    """Watchdog and status pings: both run on the event loop, so they stop when it stalls."""
    loop = worker.loop
    timers: list[asyncio.TimerHandle] = []
    if "NOTIFY_SOCKET" not in os.environ:
        return timers
    interval = sd.watchdog_interval()
    if interval:
        def ping() -> None:
            sd.notify("WATCHDOG=1")
            timers[0] = loop.call_later(interval, ping)

        timers.append(loop.call_later(0, ping))
    last = [""]

    def status() -> None:
        line = worker.status_line()
        if line != last[0]:
            last[0] = line
            sd.notify(f"STATUS={line}")
        timers[-1] = loop.call_later(STATUS_INTERVAL, status)

    timers.append(loop.call_later(STATUS_INTERVAL, status))
    return timers
