"""The balancer process's life cycle: sockets, control plane, readiness, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

from aiohttp import web

from ripsvc import logs, sd
from ripsvc.balancer.control import make_app
from ripsvc.balancer.core import Balancer
from ripsvc.balancer.front import ClientConnection
from ripsvc.balancer.options import BalancerOptions
from ripsvc.control import bind_socket
from ripsvc.exitcodes import ExitCode
from ripsvc.sockets import Bind, SocketError, describe

log = logs.get("balancer")


@dataclass(frozen=True)
class StaticWorker:
    """A worker named on the command line: ID=SOCKET[@VERSION]."""

    id: str
    socket: str
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> StaticWorker:
        worker_id, sep, rest = text.partition("=")
        if not sep or not worker_id or not rest:
            raise ValueError(f"{text!r}: expected ID=SOCKET_PATH[@VERSION]")
        path, _, version = rest.partition("@")
        return cls(worker_id, path, version)


@dataclass(frozen=True)
class Plan:
    options: BalancerOptions
    listen: list[Bind] = field(default_factory=list)
    control: str | None = None
    workers: list[StaticWorker] = field(default_factory=list)
    graceful_timeout: float = 30.0


async def run(plan: Plan) -> ExitCode:
    loop = asyncio.get_running_loop()
    balancer = Balancer(plan.options, loop)
    passed = sd.listen_sockets()
    control_sock = passed.pop("control", None)
    sockets = list(passed.values()) + [bind.open() for bind in plan.listen]
    if not sockets:
        raise SocketError("no listening socket: none passed by socket activation "
                          "(LISTEN_FDS) and no --listen given")
    if control_sock is None and plan.control:
        control_sock = bind_socket(plan.control)

    servers = [await loop.create_server(lambda: ClientConnection(balancer), sock=sock)
               for sock in sockets]
    balancer.ports = [describe(sock) for sock in sockets]
    control_runner = None
    if control_sock is not None:
        control_runner = web.AppRunner(make_app(balancer), handle_signals=False,
                                       access_log=None)
        await control_runner.setup()
        await web.SockSite(control_runner, control_sock).start()
    for worker in plan.workers:
        balancer.join(worker.id, worker.socket, worker.version)
    balancer.start_sweeper()

    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    log.info("balancing %s on %s (control: %s)", plan.options.app, ", ".join(balancer.ports),
             plan.control or ("passed socket" if control_sock else "none"))
    sd.notify("READY=1", f"STATUS=listening on {', '.join(balancer.ports)}",
              f"MAINPID={os.getpid()}")
    stop_watchdog = sd.start_watchdog(loop)

    await stopping.wait()
    stop_watchdog()
    sd.notify("STOPPING=1")
    log.info("stopping: no new connections; finishing requests in flight")
    for server in servers:
        server.close()
    balancer.begin_stop()
    try:
        await asyncio.wait_for(balancer.all_answered.wait(), plan.graceful_timeout)
    except TimeoutError:
        log.warning("%d requests still in flight after %.1f s; closing them",
                    balancer.in_flight, plan.graceful_timeout)
    balancer.stop()
    balancer.access_log.flush()
    for client in list(balancer.clients):
        client.transport.close()
    if control_runner is not None:
        await control_runner.cleanup()
    if plan.control:
        with contextlib.suppress(OSError):
            os.unlink(plan.control)
    for bind in plan.listen:
        if bind.path:
            with contextlib.suppress(OSError):
                os.unlink(bind.path)
    return ExitCode.OK


