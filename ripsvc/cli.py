"""`rip-server` and `ripctl`.

`rip-server APP [w:N] [http:PORT] [r:…] [--reload=…] [--name NAME]` runs the app in the
foreground: a balancer and N workers under the embedded manager (no systemd needed).
SIGHUP does a rolling restart; SIGINT/SIGTERM stop everything gracefully.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ripsvc import logs
from ripsvc.apploader import AppLoadError, parse_spec
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.sockets import Bind

if TYPE_CHECKING:
    from ripsvc.manager.embedded import ServePlan

DEFAULT_PORT = 8000
USAGE = ("usage: rip-server APP [w:N|auto|half|2x|3x] [http:PORT] [r:REQUESTS,SECONDSs,RELOADSr]"
         " [--reload=none|process|module] [--name NAME]")


def parse_workers(text: str) -> int:
    """`w:4`, `w:auto` (one per CPU), `w:half` (the default), `w:2x`, `w:3x`."""
    cpus = os.cpu_count() or 1
    value = text[2:]
    named = {"auto": cpus, "half": max(1, cpus // 2), "2x": 2 * cpus, "3x": 3 * cpus}
    if value in named:
        return named[value]
    if value.isdigit() and 0 < int(value) <= 1024:
        return int(value)
    raise ValueError(f"{text!r} is not a worker count (w:N with N in 1..1024, w:auto, w:half, "
                     "w:2x, w:3x)")


def _serve_plan(tokens: list[str]) -> ServePlan:
    """Read rip-server's position-independent tokens; report every problem at once."""
    from ripsvc.manager.embedded import ServePlan

    app: str | None = None
    name: str | None = None
    workers = parse_workers("w:half")
    listen: list[Bind] = []
    worker_args: list[str] = []
    problems: list[str] = []
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        try:
            if token.startswith("--name"):
                name = token.partition("=")[2] or (tokens.pop(0) if tokens else "")
                if not name:
                    raise ValueError("--name needs a value")
            elif token.startswith("--reload"):
                mode = token.partition("=")[2] or (tokens.pop(0) if tokens else "")
                if mode not in ("none", "process", "module"):
                    raise ValueError(f"--reload {mode!r}: expected none, process or module")
                worker_args += ["--reload", mode]
            elif token.startswith("w:"):
                workers = parse_workers(token)
            elif token.startswith("http:"):
                listen.append(Bind.parse(token))
            elif token.startswith("r:"):
                worker_args += ["--recycle", token]
            elif token.startswith("https:") or token.isdigit():
                raise ValueError(f"{token!r}: HTTPS is not available yet; use http:PORT")
            elif app is None and (Path(token).exists() or ":" in token):
                app = token
            else:
                raise ValueError(f"{token!r}: not an app path, w:N, http:PORT, r:… or option")
        except ValueError as exc:
            problems.append(str(exc))
    if app is None:
        problems.append("no app given (a directory with app.py, file.py[:attr] or module:attr)")
    else:
        try:
            spec = parse_spec(app)
            name = name or (spec.directory.name if spec.module == "app" else spec.module)
        except AppLoadError as exc:
            problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"rip-server: {problem}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    assert app is not None and name is not None
    return ServePlan(app=app, name=name, workers=workers,
                     listen=listen or [Bind.parse(f"http:{DEFAULT_PORT}")],
                     worker_args=worker_args)


def serve_main(argv: list[str] | None = None) -> None:
    tokens = sys.argv[1:] if argv is None else argv
    if tokens in (["-h"], ["--help"]):
        print(USAGE)
        return
    plan = _serve_plan(tokens)
    from ripsvc.manager.embedded import Manager

    logs.setup("server", level=logging.INFO, APP=plan.name)

    async def main() -> ExitCode:
        return await Manager(plan).run()

    run_and_exit("manager", main())


def ripctl_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ripctl", description="Control rip-server apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run an app in the foreground (= rip-server)")
    serve.add_argument("tokens", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_main(args.tokens)
