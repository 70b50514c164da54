"""The balancer process's life cycle: sockets, control plane, readiness, graceful stop."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import errno
import os
import resource
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from ripsvc import compiled, edge, hosts, logs, sd
from ripsvc.balancer import proxyproto
from ripsvc.balancer.accesslog import AccessLog
from ripsvc.balancer.agent import Agent
from ripsvc.balancer.client import Client
from ripsvc.balancer.control import make_app, metrics_handler
from ripsvc.balancer.core import REPORT_INTERVAL, SWEEP_INTERVAL, Balancer, Connecting
from ripsvc.balancer.handoff import Channels
from ripsvc.balancer.options import BalancerOptions, nice_for
from ripsvc.balancer.upstream import CONNECTING
from ripsvc.control import bind_socket
from ripsvc.exitcodes import ExitCode
from ripsvc.process import set_priority
from ripsvc.settings import DEFAULTS
from ripsvc.sockets import BACKLOG, Bind, SocketError, describe, local_port

log = logs.get("balancer")


class LoopNetwork:
    """The core's way to worker sockets (core.Network), on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, balancer: Callable[[], Balancer],
                 timeout: float) -> None:
        self.loop = loop
        self.balancer = balancer
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.handoffs = Channels(loop, lambda path, n: balancer().handed_over_ended(path, n))

    def websocket_worker(self, path: str) -> None:
        self.handoffs.open(path)

    def hand_over(self, path: str, transport: Any, head: bytes) -> bool:
        return self.handoffs.hand_over(path, transport, head)

    def connect(self, path: str, protocol: Connecting) -> None:
        task = self.loop.create_task(self._connect(path, protocol))
        self._tasks.add(task)  # a reference, so that the task is not collected half-way
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, path: str, protocol: Connecting) -> None:
        try:
            # An asyncio protocol in all but its base class (it is compiled: see client.py)
            made = cast(asyncio.Protocol, protocol)
            await asyncio.wait_for(self.loop.create_unix_connection(lambda: made, path),
                                   self.timeout)
        except (OSError, TimeoutError) as exc:
            if protocol.state == CONNECTING:
                why = f"cannot connect to {path}: {exc or 'timed out'}"
                try:
                    protocol.connect_failed(why)
                except Exception as error:
                    self.balancer().internal_error(error, f"a failed connection to {path}")


class Sweeper:
    """Calls the core's tick every SWEEP_INTERVAL: re-armed first, so that nothing the tick
    does can stop it (and the tick reports its own failures). Once a second it also looks at
    the process's descriptors (Descriptors)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, balancer: Balancer) -> None:
        self.loop = loop
        self.balancer = balancer
        self.descriptors = Descriptors(balancer)
        self._timer: asyncio.TimerHandle | None = None
        self._checked = 0.0

    def start(self) -> None:
        self._timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self._timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        try:
            now = self.balancer.clock()
            self.balancer.tick(now)
            if now - self._checked >= 1.0:
                self._checked = now
                self.descriptors.check()
        except Exception as exc:  # tick catches its own; this is the last line
            self.balancer.internal_error(exc, "the sweeper")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Descriptors:
    """Running out of file descriptors is silent otherwise: libuv closes the connections it
    cannot accept (its "EMFILE trick") and tells nobody. Counted (descriptors_exhausted) and
    logged at most every REPORT_INTERVAL; accepting goes on once descriptors are free."""

    #: Within this many of the limit, accepting fails (libuv keeps one in reserve).
    HEADROOM = 8

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self._reported = -REPORT_INTERVAL

    def check(self) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        guess = len(self.balancer.clients) + 2 * len(self.balancer.pool.slots) + 32
        if limit == resource.RLIM_INFINITY or guess < limit // 2:
            return  # far from it: /proc is not read
        try:
            used = len(os.listdir("/proc/self/fd"))
        except OSError as exc:  # no descriptor left to read the directory with: the answer
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            used = limit
        if used < limit - self.HEADROOM:
            return
        stats = self.balancer.stats
        stats["descriptors_exhausted"] += 1
        now = time.monotonic()
        if now - self._reported >= REPORT_INTERVAL:
            self._reported = now
            log.error("out of file descriptors: %d of %d in use, new connections are refused "
                      "until some close (LimitNOFILE= raises the limit; %d checks so far)",
                      used, limit, stats["descriptors_exhausted"])


def make_balancer(options: BalancerOptions, loop: asyncio.AbstractEventLoop) -> Balancer:
    """The core with its adapters: the monotonic clock (microseconds: uvloop's loop.time()
    counts whole milliseconds, too coarse for a request's duration), the loop's network,
    the access log."""
    stats: Counter[str] = Counter()
    access_log = AccessLog(options.app, loop, enabled=options.access_log,
                           json_format=options.json_logging, stats=stats)
    balancer = Balancer(options, time.monotonic, LoopNetwork(loop, lambda: balancer,
                                                            options.connect_timeout),
                        access_log)
    balancer.stats = stats
    return balancer


class ProxyThenTLS(asyncio.Protocol):
    """A PROXY protocol header, then TLS on the same connection (HAProxy's `send-proxy` in
    front of an HTTPS listener). The handshake may start only after the header, so instead of
    the server's own TLS, asyncio's TLS protocol is put under the client connection here, and
    whatever arrived after the header (the start of the ClientHello) is handed to it."""

    transport: asyncio.Transport

    def __init__(self, balancer: Balancer, context: ssl.SSLContext,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.balancer = balancer
        self.context = context
        self.loop = loop
        self.received = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._timer = self.loop.call_later(self.balancer.options.header_timeout,
                                           self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.received += data
        try:
            info, used = proxyproto.parse(self.received)
        except proxyproto.ProxyHeaderError as exc:
            log.info("closing a connection with a bad PROXY protocol header: %s", exc)
            self.balancer.stats["bad_proxy_header"] += 1
            self.transport.abort()
            return
        if not used:
            return
        if self._timer is not None:
            self._timer.cancel()
        client = Client(self.balancer, b"https")
        if info is not None and info.source is not None:
            client.proxied_peer = info.source
        layer = asyncio.sslproto.SSLProtocol(
            self.loop, client, self.context, None,  # type: ignore[arg-type]
            server_side=True,
            ssl_handshake_timeout=self.balancer.options.header_timeout)  # type: ignore[arg-type]
        self.transport.set_protocol(layer)
        layer.connection_made(self.transport)
        rest = memoryview(self.received)[used:]
        while rest:
            buffer = layer.get_buffer(len(rest))
            size = min(len(buffer), len(rest))
            buffer[:size] = rest[:size]
            layer.buffer_updated(size)
            rest = rest[size:]


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
    websocket_workers: list[StaticWorker] = field(default_factory=list)
    graceful_timeout: float = DEFAULTS.graceful_timeout


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
    factory: Callable[[], Any]  # Client: an asyncio protocol without the base class
    context: ssl.SSLContext | None = None
    if port in options.tls_ports:
        assert balancer.tls_context is not None
        if proxied:  # the PROXY header comes before the TLS handshake: TLS is put in later
            factory = partial(ProxyThenTLS, balancer, balancer.tls_context, loop)
        else:
            context = balancer.tls_context
            factory = partial(Client, balancer, b"https")
    elif port in options.redirect_ports:
        bound = [p for p in map(local_port, every) if p in options.tls_ports]
        target = (bound or list(options.tls_ports) or [443])[0]
        factory = partial(Client, balancer, redirect_port=target, proxy_protocol=proxied)
    else:
        factory = partial(Client, balancer, proxy_protocol=proxied)
    return await loop.create_server(cast(Callable[[], asyncio.Protocol], factory), sock=sock,
                                    ssl=context, backlog=BACKLOG,
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
    raise_descriptor_limit()
    try:
        balancer = make_balancer(plan.options, loop)
        balancer.tls_context = load_tls(plan.options)
    except (edge.CertificateError, hosts.HostFileError) as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    access_log = balancer.access_log  # where it goes decides the priority (nice_for)
    assert isinstance(access_log, AccessLog)
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
    agent = Agent(loop, balancer)
    if plan.options.agent_port:
        await agent.start(plan.options.agent_port)
    for worker in plan.workers:
        balancer.join(worker.id, worker.socket, worker.version)
    for worker in plan.websocket_workers:
        balancer.join_websocket(worker.id, worker.socket, worker.version, 1000)
    sweeper = Sweeper(loop, balancer)
    sweeper.start()

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
    await wait_out_shutdown_delay(balancer, stopping)
    stop_watchdog()
    sd.notify("STOPPING=1")
    log.info("stopping: no new connections; finishing requests in flight")
    for server in servers:
        server.close()
    balancer.begin_stop()
    deadline = loop.time() + plan.graceful_timeout
    while balancer.in_flight and loop.time() < deadline:
        await asyncio.sleep(SWEEP_INTERVAL)
    if balancer.in_flight:
        log.warning("%d requests still in flight after %.1f s; closing them",
                    balancer.in_flight, plan.graceful_timeout)
    sweeper.stop()
    access_log.flush()
    for client in list(balancer.clients):
        client.transport.close()
    agent.close()
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




async def wait_out_shutdown_delay(balancer: Balancer, stopping: asyncio.Event) -> None:
    """Before a graceful stop, readiness fails for shutdown_delay seconds while everything
    that arrives is served, so that a load balancer in front (its readiness check, the agent)
    stops sending first: Kubernetes' preStop pattern, without a sleep in a hook. Time the app
    was already draining counts; a second SIGTERM or SIGINT ends the wait."""
    delay = balancer.options.shutdown_delay - balancer.drained_for()
    if delay <= 0:
        return
    balancer.drain_app("stopping")
    log.info("stopping in %.1f s (shutdown_delay): readiness fails, requests are still "
             "served", delay)
    sd.notify(f"STATUS=draining: stopping in {delay:.1f} s")
    stopping.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)


def raise_descriptor_limit() -> None:
    """Every client and worker connection is a descriptor: the soft limit (1024 by default)
    goes up to the hard one, as nginx's worker_rlimit_nofile would do it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
