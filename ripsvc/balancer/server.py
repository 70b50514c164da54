"""The balancer process's life cycle: sockets, control plane, readiness, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from aiohttp import web

from ripsvc import compiled, edge, hosts, logs, sd
from ripsvc.balancer.control import make_app, metrics_handler
from ripsvc.balancer.core import Balancer
from ripsvc.balancer.front import ClientConnection, ProxyThenTLS
from ripsvc.balancer.options import BalancerOptions, nice_for
from ripsvc.control import bind_socket
from ripsvc.exitcodes import ExitCode
from ripsvc.process import set_priority
from ripsvc.sockets import BACKLOG, Bind, SocketError, describe, local_port

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


def describe_role(sock: socket.socket, options: BalancerOptions) -> str:
    port = local_port(sock)
    scheme = ("https" if port in options.tls_ports else
              "redirect" if port in options.redirect_ports else "http")
    return f"{scheme}://{describe(sock)}"


async def serve(loop: asyncio.AbstractEventLoop, balancer: Balancer, sock: socket.socket,
                every: list[socket.socket]) -> asyncio.AbstractServer:
    """Serve one listening socket in its role, which its port says: HTTPS (--tls-port),
    redirect to HTTPS (--redirect-port) or plain HTTP. Under systemd the sockets come from a
    socket unit, so the port is what tells them apart."""
    options = balancer.options
    port = local_port(sock)
    proxied = options.proxy_protocol
    factory: Callable[[], asyncio.Protocol]
    context: ssl.SSLContext | None = None
    if port in options.tls_ports:
        assert balancer.tls_context is not None
        if proxied:  # the PROXY header comes before the TLS handshake: TLS is put in later
            factory = partial(ProxyThenTLS, balancer, balancer.tls_context)
        else:
            context = balancer.tls_context
            factory = partial(ClientConnection, balancer, b"https")
    elif port in options.redirect_ports:
        bound = [p for p in map(local_port, every) if p in options.tls_ports]
        target = (bound or list(options.tls_ports) or [443])[0]
        factory = partial(ClientConnection, balancer, redirect_port=target,
                          proxy_protocol=proxied)
    else:
        factory = partial(ClientConnection, balancer, proxy_protocol=proxied)
    return await loop.create_server(factory, sock=sock, ssl=context, backlog=BACKLOG,
                                    ssl_handshake_timeout=options.header_timeout
                                    if context else None)


def load_tls(options: BalancerOptions) -> ssl.SSLContext | None:
    if not options.tls_ports:
        return None
    if not (options.cert and options.key):
        raise edge.CertificateError("HTTPS ports (--tls-port) need --cert and --key")
    from ripsvc import tls  # cryptography: only for HTTPS

    return tls.server_context(Path(options.cert), Path(options.key))


async def run(plan: Plan) -> ExitCode:
    loop = asyncio.get_running_loop()
    try:
        balancer = Balancer(plan.options, loop)
        balancer.tls_context = load_tls(plan.options)
    except (edge.CertificateError, hosts.HostFileError) as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    access_log = balancer.access_log  # where it goes decides the priority (nice_for)
    set_priority("balancer", nice_for(plan.options.nice,
                                      access_log.enabled and access_log.journal))
    passed = sd.listen_sockets()
    control_sock = passed.pop("control", None)
    sockets = list(passed.values()) + [bind.open() for bind in plan.listen]
    if not sockets:
        raise SocketError("no listening socket: none passed by socket activation "
                          "(LISTEN_FDS) and no --listen given")
    if control_sock is None and plan.control:
        control_sock = bind_socket(plan.control)

    servers = [await serve(loop, balancer, sock, sockets) for sock in sockets]
    balancer.ports = [describe_role(sock, plan.options) for sock in sockets]
    balancer.tcp_ports = [port for port in map(local_port, sockets) if port]
    control_runner = None
    if control_sock is not None:
        control_runner = web.AppRunner(make_app(balancer), handle_signals=False,
                                       access_log=None)
        await control_runner.setup()
        await web.SockSite(control_runner, control_sock).start()
    metrics_runner = None
    if plan.options.metrics_port:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", metrics_handler(balancer))
        metrics_runner = web.AppRunner(metrics_app, handle_signals=False, access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, "127.0.0.1", plan.options.metrics_port).start()
    for worker in plan.workers:
        balancer.join(worker.id, worker.socket, worker.version)
    balancer.start_sweeper()

    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    log.info("balancing %s on %s (control: %s)", plan.options.app, ", ".join(balancer.ports),
             plan.control or ("passed socket" if control_sock else "none"))
    compiled.log_state(log)
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
    for runner in (control_runner, metrics_runner):
        if runner is not None:
            await runner.cleanup()
    if plan.control:
        with contextlib.suppress(OSError):
            os.unlink(plan.control)
    for bind in plan.listen:
        if bind.path:
            with contextlib.suppress(OSError):
                os.unlink(bind.path)
    return ExitCode.OK


