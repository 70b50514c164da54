"""`rip-worker APP [options]` / `python -m ripsvc.worker`.

Its settings (reload, recycling, the graceful timeout, the body limit) are declared in
settings.py, which adds them to this parser: the manager writes them with the same
declarations (ripsvc/launch.py), and what is not given is the settings' default.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ripsvc import __version__, logs, settings
from ripsvc.apploader import AppLoadError, parse_spec
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.sockets import Bind
from ripsvc.values import parse_seconds, typed
from ripsvc.worker.core import WorkerOptions
from ripsvc.worker.server import run

#: --recycle-handoff without a value: how long a worker that asked for a successor serves on.
HANDOFF = 60.0


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
    p.add_argument("--recycle-handoff", nargs="?", const=HANDOFF, default=0.0,
                   type=typed(parse_seconds, "duration"), metavar="SECONDS",
                   help="on reaching a recycling limit, announce it (sd_notify RIP_RECYCLE=1) "
                   f"and keep serving until stopped, at most SECONDS ({HANDOFF:g} if omitted), "
                   "so that the supervisor starts a successor first")
    p.add_argument("--websocket", action="store_true",
                   help="serve the app's WebSockets, many at once, instead of HTTP requests "
                   "(ASGI and aiohttp apps; a WSGI app exits with 78)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"rip-worker {__version__}")
    settings.add_arguments(p, "worker")
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
    options = WorkerOptions.from_settings(settings.from_arguments(args, "worker"), spec,
                                          name=name, worker_id=args.worker_id,
                                          recycle_handoff=args.recycle_handoff,
                                          websocket=args.websocket)
    run_and_exit("worker", run(options, args.bind))


if __name__ == "__main__":
    main()
