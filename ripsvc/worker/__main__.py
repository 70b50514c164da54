"""`rip-worker APP [options]` / `python -m ripsvc.worker`."""

from __future__ import annotations

import argparse
import logging
import sys

from ripsvc import __version__, logs
from ripsvc.apploader import AppLoadError, parse_spec
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.recycle import RecyclePolicy
from ripsvc.sockets import Bind
from ripsvc.values import parse_seconds, parse_size, typed
from ripsvc.worker.core import RELOAD_MODES, WebSocketLimits, WorkerOptions
from ripsvc.worker.server import run


def _jitter(text: str) -> float:
    value = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 1:
        raise ValueError(f"{text!r} must be a share between 0 and 1 (or 0%..99%)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rip-worker",
        description="Run a Python web app (ASGI 3, WSGI or aiohttp), one request at a time, "
        "on a socket passed by systemd (LISTEN_FDS) or bound with --bind.",
    )
    p.add_argument("app", help="module:attr, path/to/file.py[:attr] or a directory with app.py")
    p.add_argument("--bind", type=typed(Bind.parse, "address"),
                   help="create the listening socket: a Unix socket path, or tcp:HOST:PORT")
    p.add_argument("--name", default=None, help="the app's name in logs (default: from APP)")
    p.add_argument("--id", dest="worker_id", default="0", help="this worker's id in logs")
    p.add_argument("--reload", choices=RELOAD_MODES, default="process",
                   help="module: re-import changed app modules before requests (default: process)")
    p.add_argument("--recycle", type=typed(RecyclePolicy.parse, "policy"),
                   default=RecyclePolicy(), metavar="r:REQUESTS,SECONDSs,RELOADSr",
                   help="recycling limits, 0 disables one (default: r:10000,3600s,10r)")
    p.add_argument("--recycle-jitter", type=typed(_jitter, "share"), default=0.1,
                   help="lower request and age limits by up to this share (default: 10%%)")
    p.add_argument("--recycle-handoff", nargs="?", const=60.0, default=0.0,
                   type=typed(parse_seconds, "duration"), metavar="SECONDS",
                   help="on reaching a recycling limit, announce it (sd_notify RIP_RECYCLE=1) "
                   "and keep serving until stopped, at most SECONDS (60 if omitted), so that "
                   "the supervisor starts a successor first")
    p.add_argument("--graceful-timeout", type=typed(parse_seconds, "duration"), default=30.0,
                   help="on SIGTERM, how long the request in flight may take (default: 30s)")
    p.add_argument("--max-body", type=typed(parse_size, "size"), default=100 << 20,
                   help="largest request body, else 413 (default: 100M)")
    p.add_argument("--websocket", action="store_true",
                   help="serve the app's WebSockets, many at once, instead of HTTP requests "
                   "(ASGI and aiohttp apps; a WSGI app exits with 78)")
    d = WebSocketLimits()
    p.add_argument("--websocket-connections", type=int, default=d.connections,
                   help="WebSockets at once in this worker (default: %(default)s)")
    p.add_argument("--websocket-max-message", type=typed(parse_size, "size"),
                   default=d.max_message, help="largest message, else closed with 1009")
    p.add_argument("--websocket-ping", type=typed(parse_seconds, "duration"),
                   default=d.ping_interval, help="ping a WebSocket silent this long, close it "
                   "if no answer comes as long after (0: never; default: %(default)ss)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"rip-worker {__version__}")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        spec = parse_spec(args.app)
    except AppLoadError as exc:
        print(f"rip-worker: {exc}", file=sys.stderr)
        sys.exit(ExitCode.APP_LOAD_ERROR)
    name = args.name or (spec.directory.name if spec.module == "app" else spec.module)
    logs.setup("worker", level=getattr(logging, args.log_level.upper()),
               APP=name, WORKER=args.worker_id)
    options = WorkerOptions(
        app=spec, name=name, worker_id=args.worker_id, reload=args.reload,
        recycle=args.recycle, recycle_jitter=args.recycle_jitter,
        graceful_timeout=args.graceful_timeout, max_body=args.max_body,
        recycle_handoff=args.recycle_handoff, websocket=args.websocket,
        websocket_limits=WebSocketLimits(args.websocket_connections, args.websocket_max_message,
                                         args.websocket_ping, args.websocket_ping),
    )
    run_and_exit("worker", run(options, args.bind))


if __name__ == "__main__":
    main()
