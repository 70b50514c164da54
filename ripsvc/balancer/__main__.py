"""`python -m ripsvc.balancer --app NAME --listen … --control SOCK [--worker ID=SOCK]…`.

Its settings (the queue, the timeouts, the limits, the access log …) are declared in
settings.py, which adds them to this parser: the manager writes them with the same
declarations (ripsvc/launch.py), and what is not given is the settings' default.
"""

from __future__ import annotations

import argparse
import logging

from ripsvc import __version__, logs, settings
from ripsvc.balancer.options import BalancerOptions
from ripsvc.balancer.server import Plan, StaticWorker, run
from ripsvc.balancer.static import StaticFiles
from ripsvc.process import run_and_exit
from ripsvc.sockets import Bind
from ripsvc.values import typed


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rip-balancer",
        description="Balance HTTP requests over single-request workers (one per Unix socket).")
    p.add_argument("--app", default=BalancerOptions.app, help="the app's name (logs, /status)")
    p.add_argument("--listen", action="append", default=[], type=typed(Bind.parse, "address"),
                   help="http:PORT, tcp:HOST:PORT or a Unix socket path (repeatable); "
                   "sockets passed by systemd are used as well")
    p.add_argument("--control", help="path of the control socket (JSON over HTTP)")
    p.add_argument("--worker", action="append", default=[],
                   type=typed(StaticWorker.parse, "worker"),
                   help="a worker to start with: ID=SOCKET_PATH[@VERSION] (repeatable)")
    p.add_argument("--websocket-worker", action="append", default=[],
                   type=typed(StaticWorker.parse, "worker"),
                   help="a WebSocket worker to start with: ID=SOCKET_PATH[@VERSION] "
                   "(repeatable)")
    p.add_argument("--hosts-file", default="", help="the registry file of hosts added at run "
                   "time (read at start; kept by the manager)")
    port = typed(_port, "port")
    p.add_argument("--tls-port", action="append", type=port, default=[],
                   help="a listening port that serves HTTPS (repeatable)")
    p.add_argument("--redirect-port", action="append", type=port, default=[],
                   help="a listening port that answers 301 to HTTPS (repeatable)")
    p.add_argument("--cert", default="", help="certificate chain (PEM) for the HTTPS ports "
                   "(the manager's copy, edge.py)")
    p.add_argument("--key", default="", help="its private key (PEM)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"rip-balancer {__version__}")
    settings.add_arguments(p, "balancer")
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    """What the balancer runs, from its parsed command line."""
    given = settings.from_arguments(args, "balancer")
    options = BalancerOptions.from_settings(
        given, app=args.app, hosts_file=args.hosts_file, tls_ports=tuple(args.tls_port),
        redirect_ports=tuple(args.redirect_port), cert=args.cert, key=args.key)
    return Plan(options, args.listen, args.control, args.worker, args.websocket_worker,
                graceful_timeout=given.graceful_timeout)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.setup("balancer", level=getattr(logging, args.log_level.upper()), APP=args.app)
    plan = plan_from(args)
    static = StaticFiles.of(plan.options)
    if static is not None:
        static.check()  # a mount that cannot serve is said at the start
    run_and_exit("balancer", run(plan))


if __name__ == "__main__":
    main()
