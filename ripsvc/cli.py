"""`rip-server` and `ripctl`.

`rip-server APP [w:N] [http:PORT] [r:…] [--reload=…] [--name NAME]` runs the app in the
foreground: a balancer and N workers under the embedded manager (no systemd needed).
SIGHUP does a rolling restart; SIGINT/SIGTERM stop everything gracefully.

What a newcomer types first is answered here: no argument or a bad one prints what to type
instead (exit 2), and ripctl finds the app by itself when only one runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ripsvc import logs
from ripsvc.apploader import parse_spec
from ripsvc.exitcodes import ExitCode
from ripsvc.settings import FIELDS, MISSING_APP, Settings, SettingsError, resolve
from ripsvc.values import parse_seconds, typed

USAGE = ("usage: rip-server APP [w:N|auto|half|2x|3x] [http:PORT] [r:REQUESTS,SECONDSs,RELOADSr]"
         " [--option VALUE …] [--config FILE.toml]\n"
         "       rip-server stop|restart [APP]")

#: The first thing a newcomer needs: APP for the three usual frameworks.
EXAMPLES = """APP, from your project's directory:
  rip-server mysite.wsgi:application    Django (the directory with manage.py)
  rip-server app:app                    Flask (app.py)
  rip-server main:app                   FastAPI (main.py)
  rip-server ./myapp                    a directory with app.py
then open http://127.0.0.1:8000/ (another port: http:8080)."""

if TYPE_CHECKING:
    from ripsvc.manager.supervisor import ServePlan

CONFIG_DIR = Path("/etc/rip")


def plan_from(settings: Settings, config_dir: Path | None = None) -> ServePlan:
    """What the manager runs; a relative app path is relative to `config_dir` (the app
    file's directory) or else to the current directory."""
    from ripsvc.manager.supervisor import ServePlan

    restart_file = None
    if settings.reload == "process" and settings.restart_file:
        restart_file = parse_spec(settings.app, cwd=config_dir).directory / settings.restart_file
    return ServePlan(settings, restart_file=restart_file)


def serve_main(argv: list[str] | None = None) -> None:
    tokens = sys.argv[1:] if argv is None else argv
    if "-h" in tokens or "--help" in tokens:
        sys.exit(printing(lambda: print(f"{USAGE}\n\n{EXAMPLES}\n{settings_help()}")))
    if tokens and tokens[0] in ("stop", "restart") and len(tokens) <= 2:
        sys.exit(act_on_running(tokens[0], tokens[1] if len(tokens) == 2 else None))
    try:
        settings = resolve(tokens)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"rip-server: {problem}", file=sys.stderr)
        if MISSING_APP in exc.problems:
            print(f"{USAGE}\n\n{EXAMPLES}", file=sys.stderr)
        if not any("did you mean" in problem for problem in exc.problems):
            print("rip-server --help lists every option.", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    plan = plan_from(settings)
    from ripsvc.manager.core import Manager
    from ripsvc.manager.embedded import EmbeddedSupervisor
    from ripsvc.process import run_and_exit  # uvloop: not needed by ripctl or the man pages

    logs.setup("server", level=logging.INFO, APP=plan.name)

    async def main() -> ExitCode:
        return await Manager(plan, EmbeddedSupervisor).run()

    run_and_exit("manager", main())


def act_on_running(action: str, app: str | None) -> int:
    """`rip-server stop|restart [APP]`: APP may be left out when exactly one app runs."""
    command = "stop" if action == "stop" else "reload"
    return command_main(argparse.Namespace(command=command, app=app, wait=True, json=False,
                                           tls=False), typed=f"rip-server {action}")


def printing(write: Callable[[], object]) -> int:
    """Run `write` (which prints to stdout) and flush; a reader that went away (`ripctl
    status | head -1`) ends the output quietly instead of with a BrokenPipeError."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it where that cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ExitCode.OK


def settings_help() -> str:
    lines = ["", "settings (also in --config FILE.toml and RIP_* variables):"]
    for f in FIELDS.values():
        meta = f.metadata
        forms = [meta["kind"]] if meta["token"] else []
        forms += [meta["flag"]] if meta["flag"] else []
        how = ", ".join(forms) or "APP"
        lines += [f"  {how}", f"  {'':<34} {meta['help']}"] if len(how) > 34 else \
            [f"  {how:<34} {meta['help']}"]
    return "\n".join(lines)


def ripctl_parser() -> argparse.ArgumentParser:
    """ripctl's command line (also the source of its man page, ripsvc/manpages.py)."""
    parser = argparse.ArgumentParser(prog="ripctl", description="Control rip-server apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run an app in the foreground (= rip-server)")
    serve.add_argument("tokens", nargs=argparse.REMAINDER)
    check = commands.add_parser("check", help="validate an app's settings file")
    check.add_argument("target", help="APP (reads /etc/rip/APP.toml) or a path to a .toml file")
    status = commands.add_parser("status", help="workers, states, queue, request counts "
                                 "(without APP and with several apps running: each app)")
    status.add_argument("app", nargs="?", help="the app (default: every one running)")
    status.add_argument("-j", "--json", action="store_true", help="print JSON")
    reload = commands.add_parser("reload", help="rolling restart, no failed request")
    reload.add_argument("app", nargs="?", help="the app (default: the only one running)")
    reload.add_argument("--wait", action="store_true",
                        help="return when it is done; exit 1 if it failed")
    reload.add_argument("--tls", action="store_true",
                        help="only load the renewed certificate files (no restart)")
    hosts = commands.add_parser("hosts", help="the host names the app answers (others: 404)")
    hosts.add_argument("app")
    hosts.add_argument("action", nargs="?", choices=["list", "add", "remove"], default="list")
    hosts.add_argument("host", nargs="?", help="a name, *.example.com or an IP address")
    scale = commands.add_parser("scale", help="run N workers")
    scale.add_argument("app", nargs="?", help="the app (default: the only one running)")
    scale.add_argument("workers", type=int)
    drain = commands.add_parser("drain", help="fail the app's readiness (a load balancer in "
                                "front stops sending) while serving every request that "
                                "arrives; --for: then stop it")
    drain.add_argument("app", nargs="?", help="the app (default: the only one running)")
    drain.add_argument("--for", dest="seconds", type=typed(parse_seconds, "seconds"),
                       help="stop the app after this long (30, 30s, 500ms)")
    undrain = commands.add_parser("undrain", help="readiness follows the workers again (and "
                                  "a stop set by drain --for is called off)")
    undrain.add_argument("app", nargs="?", help="the app (default: the only one running)")
    stop = commands.add_parser("stop", help="stop the app gracefully")
    stop.add_argument("app", nargs="?", help="the app (default: the only one running)")
    logs_ = commands.add_parser("logs", help="the app's journal entries (every process)")
    logs_.add_argument("app", nargs="?", help="the app (default: the only one running)")
    logs_.add_argument("-f", "--follow", action="store_true", help="wait for new entries")
    logs_.add_argument("-n", "--lines", type=int, default=50, help="entries shown first (50)")
    logs_.add_argument("-j", "--json", action="store_true", help="one JSON object per entry")
    install = commands.add_parser(
        "install", allow_abbrev=False,
        usage="ripctl install APP --app PATH [--enable] [--now] [--force] [rip-server tokens…]",
        help="write /etc/rip/APP.toml from rip-server tokens, daemon-reload")
    install.add_argument("app")
    install.add_argument("--app", dest="app_path", required=True,
                         help="a directory with app.py, file.py[:attr] or module:attr")
    install.add_argument("--enable", action="store_true", help="start it at boot")
    install.add_argument("--now", action="store_true", help="start it now")
    install.add_argument("--force", action="store_true", help="replace an existing file")
    return parser


def ripctl_main(argv: list[str] | None = None) -> None:
    parser = ripctl_parser()
    # install's other arguments are rip-server's settings (w:4 http:8080 --max-body 10M …)
    args, tokens = parser.parse_known_args(argv)
    if tokens and args.command != "install":
        parser.error(f"unrecognized arguments: {' '.join(tokens)}")
    if args.command == "install":
        from ripsvc import install as installer

        sys.exit(installer.main(args.app, args.app_path, tokens, args.enable, args.now,
                                args.force, CONFIG_DIR))
    if args.command == "serve":
        serve_main(args.tokens)
    elif args.command == "check":
        sys.exit(check_main(args.target))
    elif args.command == "logs":
        sys.exit(logs_main(args))
    else:
        sys.exit(command_main(args))


def the_only_app(typed: str) -> str | int:
    """The one app running here, or the exit code after saying why there is none to pick
    (`typed`: the command without its app, `ripctl status` or `rip-server stop`)."""
    from ripsvc import paths
    from ripsvc.ctlclient import running_apps

    prog = typed.split()[0]
    running = running_apps()
    if len(running) == 1:
        return running[0]
    if not running:
        print(f"{prog}: no app is running here (none in {paths.runtime_root()}); start one "
              "with rip-server APP, or systemctl start rip@APP", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"{prog}: {len(running)} apps are running ({', '.join(running)}); name one: "
          f"{typed} APP", file=sys.stderr)
    return ExitCode.USAGE


def logs_main(args: argparse.Namespace) -> int:
    from ripsvc import journallog, paths

    if args.app is None:
        found = the_only_app("ripctl logs")
        if not isinstance(found, str):
            return found
        args.app = found
    try:
        paths.check_name(args.app)
    except ValueError as exc:
        print(f"ripctl: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        shown = journallog.show(args.app, args.lines, args.follow, args.json)
    except KeyboardInterrupt:
        return ExitCode.OK
    except OSError as exc:
        print(f"ripctl: cannot read the journal: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    if not shown:
        print(f"ripctl: no journal entries for {args.app!r} (run it under systemd, or with "
              "its output in the journal)", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK


def command_main(args: argparse.Namespace, typed: str = "") -> int:
    """One command to a running app's manager; errors are one line and a non-zero exit.
    Without an app: the only one running (`status`: each one running)."""
    from ripsvc.ctlclient import ControlError, call, running_apps

    if args.app is None:
        running = running_apps()
        if args.command == "status" and len(running) > 1:
            return status_of_each(running, args.json)
        found = the_only_app(typed or f"ripctl {args.command}")
        if not isinstance(found, str):
            return found
        args.app = found
    body: dict[str, object] | None = {}
    command, method = args.command, ""
    if command == "reload":
        body = {"wait": args.wait, "tls": args.tls}
    elif command == "scale":
        body = {"workers": args.workers}
    elif command == "drain":
        body = {"for": args.seconds}
    elif command == "status":
        body = None
    elif command == "hosts":
        if (args.action == "list") != (args.host is None):
            print("ripctl: usage: ripctl hosts APP [list | add HOST | remove HOST]",
                  file=sys.stderr)
            return ExitCode.USAGE
        command = "registry"
        method = {"list": "GET", "add": "POST", "remove": "DELETE"}[args.action]
        body = None if args.host is None else {"host": args.host}
    try:
        data = call(args.app, command, body, method=method)
    except ControlError as exc:
        print(f"ripctl: {exc}", file=sys.stderr)
        return exc.exit_code
    text = command_output(args, data)
    return printing(lambda: print(text) if text else None)


def command_output(args: argparse.Namespace, data: Any) -> str:
    if args.command == "status":
        return json.dumps(data, indent=2) if args.json else format_status(data)
    if args.command == "hosts":
        return "\n".join([*data["configured"], *(f"{name}\t(added)" for name in data["added"])])
    if args.command == "reload" and args.tls:
        return f"{args.app}: certificate reloaded"
    if args.command == "reload":
        return (f"{args.app}: rolling restart " + ("done" if args.wait else "started") +
                f" (version {data['version']})")
    if args.command == "scale":
        return f"{args.app}: {data['workers']} workers"
    if args.command == "drain":
        return (f"{args.app}: draining: readiness fails, requests are still served; "
                + ("`ripctl undrain` ends it" if data.get("stops_in") is None
                   else f"stopping in {data['stops_in']:g} s"))
    if args.command == "undrain":
        return (f"{args.app}: undrained: readiness follows the workers again" if data["was"]
                else f"{args.app}: was not draining (nothing changed)")
    return f"{args.app}: stopping"


def status_of_each(apps: list[str], as_json: bool) -> int:
    """`ripctl status` with several apps running: each one's first status line (or its
    whole status as JSON, by app)."""
    from ripsvc.ctlclient import ControlError, call

    found: dict[str, Any] = {}
    for app in apps:
        try:
            found[app] = call(app, "status", None, timeout=10)
        except ControlError as exc:
            found[app] = {"error": str(exc)}
    if as_json:
        return printing(lambda: print(json.dumps(found, indent=2)))
    lines = [f"ripctl: {data['error']}" if "error" in data else format_status(data).split("\n")[0]
             for data in found.values()]
    return printing(lambda: print("\n".join(lines)))


def format_status(data: dict[str, Any]) -> str:
    total = data.get("requests_total", data["requests"])
    websockets = [w for w in data["workers"] if w.get("kind") == "websocket"]
    open_now = sum(w.get("open", 0) for w in websockets)
    drain = data.get("drain", {})
    lines = [f"{data['app']}: {data.get('health', data['balancer'])}, "
             + ("draining, " if drain.get("draining") else "") + f"version {data['version']}, "
             f"{len(data['workers']) - len(websockets)} workers, "
             + (f"{len(websockets)} WebSocket worker{'s' if len(websockets) > 1 else ''} "
                f"({open_now} open), " if websockets else "")
             + f"{total} requests since start "
             f"({data['requests']} by these workers), queue "
             f"{data['queue']['depth']}/{data['queue']['max']}"
             + (" (rolling restart in progress)" if data["reloading"] else "")]
    if drain.get("draining"):
        lines.append(f"  draining for {drain['for']:.0f} s: readiness fails, requests are "
                     "still served" + ("" if drain.get("stops_in") is None else
                                       f"; stopping in {drain['stops_in']:.0f} s"))
    if data.get("load_error") and not data.get("health", "").startswith("degraded"):
        lines.append(f"  the app on disk fails to load: {data['load_error']}; the workers serve "
                     "past their recycling limits until a good deploy")
    lines.append(f"  {'id':<8} {'pid':>7}  {'state':<9} {'version':>7} {'requests':>9} "
                 f"{'uptime':>9}")
    kernel = data.get("kernel", {})
    for w in data["workers"]:
        if w["state"] == "vacant":
            lines.append(f"  {w['id']:<8} {'-':>7}  {'vacant':<9} {'-':>7} {'-':>9} "
                         f"{'-':>9}  {w['reason']}")
            continue
        if w.get("kind") == "websocket":  # its requests: the WebSockets it took
            what = f"WebSockets open {w.get('open', 0)}"
        else:
            queued = kernel.get(f"worker:{w['id']}", {}).get("queued", "-")
            what = f"accept queue {queued}"
        lines.append(f"  {w['id']:<8} {w['pid']:>7}  {w['state']:<9} {w['version']:>7} "
                     f"{w['requests']:>9} {w['uptime']:>8.1f}s  {what}")
    ports = [(name, q) for name, q in kernel.items() if name.startswith("port:")]
    if ports:
        lines.append("  listening: " + ", ".join(
            f"{name[5:]} (accept queue {q['queued']}/{q['backlog']})" for name, q in ports))
    lines.append("  version: 1 at start, +1 for each rolling restart (ripctl reload)")
    lines.append("  id N.K: worker position N on its K-th socket; each rolling restart gives a "
                 f"position a new one (under systemd: unit rip-worker@{data['app']}:ID)")
    if websockets:
        lines.append("  id wsN: a WebSocket worker, holding many WebSockets (its requests: "
                     "the WebSockets it took)")
    return "\n".join(lines)


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


if __name__ == "__main__":  # python -m ripsvc.cli: ripctl, for units that name the interpreter
    ripctl_main()
