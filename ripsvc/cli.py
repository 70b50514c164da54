"""`rip-server` and `ripctl`.

`rip-server APP [w:N] [http:PORT] [r:…] [--reload=…] [--name NAME]` runs the app in the
foreground: a balancer and N workers under the embedded manager (no systemd needed).
SIGHUP does a rolling restart; SIGINT/SIGTERM stop everything gracefully.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ripsvc import logs
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.settings import FIELDS, Settings, SettingsError, resolve

USAGE = ("usage: rip-server APP [w:N|auto|half|2x|3x] [http:PORT] [r:REQUESTS,SECONDSs,RELOADSr]"
         " [--option VALUE …] [--config FILE.toml]")

if TYPE_CHECKING:
    from ripsvc.manager.embedded import ServePlan

CONFIG_DIR = Path("/etc/rip")


def plan_from(settings: Settings) -> ServePlan:
    from ripsvc.manager.embedded import ServePlan

    return ServePlan(app=settings.app, name=settings.name, workers=settings.workers,
                     listen=settings.binds(), worker_args=settings.args_for("worker"),
                     balancer_args=settings.args_for("balancer"))


def serve_main(argv: list[str] | None = None) -> None:
    tokens = sys.argv[1:] if argv is None else argv
    if tokens in (["-h"], ["--help"]):
        print(USAGE)
        print(settings_help())
        return
    try:
        settings = resolve(tokens)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"rip-server: {problem}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    plan = plan_from(settings)
    from ripsvc.manager.embedded import Manager

    logs.setup("server", level=logging.INFO, APP=plan.name)

    async def main() -> ExitCode:
        return await Manager(plan).run()

    run_and_exit("manager", main())


def settings_help() -> str:
    lines = ["", "settings (also in --config FILE.toml and RIP_* variables):"]
    for f in FIELDS.values():
        meta = f.metadata
        how = (meta["token"] and meta["kind"]) or meta["flag"] or "APP"
        lines.append(f"  {how:<34} {meta['help']}")
    return "\n".join(lines)


def ripctl_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ripctl", description="Control rip-server apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run an app in the foreground (= rip-server)")
    serve.add_argument("tokens", nargs=argparse.REMAINDER)
    check = commands.add_parser("check", help="validate an app's settings file")
    check.add_argument("target", help="APP (reads /etc/rip/APP.toml) or a path to a .toml file")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_main(args.tokens)
    elif args.command == "check":
        sys.exit(check_main(args.target))


def check_main(target: str) -> int:
    """Print every problem of a settings file (with the environment's RIP_* applied)."""
    path = Path(target) if target.endswith(".toml") or "/" in target else \
        CONFIG_DIR / f"{target}.toml"
    if not path.is_file():
        print(f"ripctl: {path}: no such file", file=sys.stderr)
        return ExitCode.USAGE
    try:
        settings = resolve(file=path)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return ExitCode.USAGE
    print(f"{path}: ok ({settings.name}: {settings.app}, {settings.workers} workers, "
          f"listening on {', '.join(settings.listen)})")
    return ExitCode.OK
