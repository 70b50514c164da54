"""`python -m ripsvc.balancer --app NAME --listen … --control SOCK [--worker ID=SOCK]…`."""

from __future__ import annotations

import argparse
import logging
import sys

from ripsvc import __version__, logs
from ripsvc.balancer.options import NICE, BalancerOptions, parse_networks
from ripsvc.balancer.server import Plan, StaticWorker, run
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.sockets import Bind
from ripsvc.values import parse_nice, parse_seconds, parse_size, typed


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port")
    return int(text)


def _port_or_off(text: str) -> int:
    return 0 if text == "0" else _port(text)


def build_parser() -> argparse.ArgumentParser:
    d = BalancerOptions()
    p = argparse.ArgumentParser(
        prog="rip-balancer",
        description="Balance HTTP requests over single-request workers (one per Unix socket).")
    p.add_argument("--app", default=d.app, help="the app's name (logs, /status)")
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
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests that may wait for a worker (default: %(default)s)")
    p.add_argument("--queue-timeout-ms", type=int, default=int(d.queue_timeout * 1000),
                   help="longest wait for a worker before 504 (default: %(default)s)")
    seconds = typed(parse_seconds, "duration")
    p.add_argument("--connect-timeout", type=seconds, default=d.connect_timeout)
    p.add_argument("--response-timeout", type=seconds, default=d.response_timeout,
                   help="a worker silent this long is hung: 504 (default: %(default)ss)")
    p.add_argument("--header-timeout", type=seconds, default=d.header_timeout,
                   help="time for a client to send request headers, else 408")
    p.add_argument("--body-timeout", type=seconds, default=d.body_timeout,
                   help="time for a client to send its body, else 408")
    p.add_argument("--keepalive-timeout", type=seconds, default=d.keepalive_timeout)
    p.add_argument("--send-timeout", type=seconds, default=d.send_timeout,
                   help="a client that reads nothing for this long is disconnected")
    p.add_argument("--graceful-timeout", type=seconds, default=30.0)
    p.add_argument("--max-body", type=typed(parse_size, "size"), default=d.max_body)
    p.add_argument("--status-path", default=d.status_path)
    p.add_argument("--server-path", default=d.server_path)
    p.add_argument("--forwarded-allow-ips", type=typed(parse_networks, "networks"), default=(),
                   help="proxies (IPs or CIDR, comma-separated) whose X-Forwarded-* and "
                   "X-Request-Id headers are kept; by default every client's are replaced")
    p.add_argument("--hosts", default="", help="host names served besides localhost, "
                   "127.0.0.1 and ::1 (comma-separated; *.example.com, *); others get 404")
    p.add_argument("--hosts-file", default="", help="the registry file of hosts added at run "
                   "time (read at start; kept by the manager)")
    port = typed(_port, "port")
    p.add_argument("--tls-port", action="append", type=port, default=[],
                   help="a listening port that serves HTTPS (repeatable)")
    p.add_argument("--redirect-port", action="append", type=port, default=[],
                   help="a listening port that answers 301 to HTTPS (repeatable)")
    p.add_argument("--cert", default="", help="certificate chain (PEM) for the HTTPS ports")
    p.add_argument("--key", default="", help="its private key (PEM)")
    p.add_argument("--hsts", action="store_true", help="Strict-Transport-Security on HTTPS")
    p.add_argument("--hsts-max-age", type=int, default=d.hsts_max_age)
    p.add_argument("--proxy-protocol", action="store_true",
                   help="every listener expects a PROXY protocol v1/v2 header first")
    p.add_argument("--metrics-port", type=typed(_port_or_off, "port"), default=0,
                   help="serve Prometheus /metrics on 127.0.0.1:PORT")
    p.add_argument("--nice", type=typed(parse_nice, "nice value"), default=None,
                   help=f"scheduling priority, -20..19 or auto (the default: {NICE}, above "
                   "the workers', or 0 when the access log goes to journald); below 0 needs "
                   "root or CAP_SYS_NICE, else it keeps its own"),
    p.add_argument("--json-logging", action="store_true")
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"rip-balancer {__version__}")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_queue < 0 or args.queue_timeout_ms < 0:
        print("rip-balancer: --max-queue and --queue-timeout-ms must not be negative",
              file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    logs.setup("balancer", level=getattr(logging, args.log_level.upper()), APP=args.app)
    options = BalancerOptions(
        app=args.app, max_queue=args.max_queue, queue_timeout=args.queue_timeout_ms / 1000,
        connect_timeout=args.connect_timeout, response_timeout=args.response_timeout,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        keepalive_timeout=args.keepalive_timeout, send_timeout=args.send_timeout,
        max_body=args.max_body,
        status_path=args.status_path, server_path=args.server_path,
        access_log=not args.no_access_log, json_logging=args.json_logging,
        forwarded_allow_ips=args.forwarded_allow_ips,
        hosts=tuple(h for h in args.hosts.split(",") if h), hosts_file=args.hosts_file,
        tls_ports=tuple(args.tls_port), redirect_ports=tuple(args.redirect_port),
        cert=args.cert, key=args.key, hsts=args.hsts, hsts_max_age=args.hsts_max_age,
        proxy_protocol=args.proxy_protocol, metrics_port=args.metrics_port, nice=args.nice)
    plan = Plan(options, args.listen, args.control, args.worker, args.websocket_worker,
                args.graceful_timeout)
    run_and_exit("balancer", run(plan))


if __name__ == "__main__":
    main()
