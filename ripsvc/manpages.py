"""The man pages, generated from what they describe: ripctl(8) and rip-worker(8) from their
parsers, rip.toml(5) and rip-server(1) from the settings declarations.
`python -m ripsvc.manpages OUTDIR` writes them (the Debian package does, at build time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ripsvc import __version__, paths
from ripsvc.exitcodes import ExitCode
from ripsvc.settings import FIELDS, shown_default

RUN = paths.SYSTEM_RUNTIME


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _header(name: str, section: int, title: str) -> list[str]:
    # SOURCE_DATE_EPOCH (set by dpkg from the changelog) keeps the build reproducible
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(stamp))
    manual = {1: "User Commands", 5: "File Formats", 8: "System Administration"}[section]
    return [f'.TH {name.upper()} {section} "{date}" "rip-server {__version__}" "{manual}"',
            ".SH NAME", f"{roff(name)} \\- {roff(title)}"]


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str,
                                                                 argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse has no public way to list sub-commands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps[name], sub) for name, sub in action.choices.items()]
    return []


def ripctl_page() -> str:
    from ripsvc.cli import ripctl_parser

    lines = _header("ripctl", 8, "control rip-server apps")
    lines += [".SH SYNOPSIS", ".B ripctl", "\\fICOMMAND\\fR \\fIAPP\\fR [\\fIOPTIONS\\fR]",
              ".SH DESCRIPTION",
              roff("ripctl starts, reloads, scales, inspects and installs the apps of "
                   "rip-server, an application server for Python web apps. Under systemd an "
                   "app APP is the unit rip@APP.service, configured by /etc/rip/APP.toml "
                   "(see rip.toml(5)); ripctl talks to its manager through "
                   f"{RUN}/APP/{paths.MANAGER_SOCKET}, which root and the members of group "
                   "rip may open."),
              ".SH COMMANDS"]
    for _name, help_text, sub in _subcommands(ripctl_parser()):
        usage = sub.format_usage().strip().removeprefix("usage: ")
        lines += [".TP", f"\\fB{roff(usage)}\\fR", roff(help_text[:1].upper() + help_text[1:])
                  + "."]
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            lines += [".RS", ".TP", "\\fB" + roff(", ".join(action.option_strings)) + "\\fR",
                      roff(action.help or ""), ".RE"]
    lines += [".SH EXIT STATUS", ".TP", "0", "Success.",
              ".TP", f"{int(ExitCode.FAILURE)}", "The command failed (no such app, a failed "
              "rolling restart, no permission).",
              ".TP", f"{int(ExitCode.USAGE)}", "Bad input: an unknown command, option or "
              "setting; every problem is printed.",
              ".SH FILES", ".TP", "/etc/rip/\\fIAPP\\fR.toml", "The settings of an app.",
              ".TP", f"{RUN}/\\fIAPP\\fR/", "The control sockets of a running app.",
              ".SH SEE ALSO", "\\fBrip.toml\\fR(5), \\fBsystemctl\\fR(1), "
              "\\fBjournalctl\\fR(1), \\fBsystemd.unit\\fR(5)"]
    return "\n".join(lines) + "\n"


def _settings(cli_first: bool) -> list[str]:
    """One .TP entry per setting: by its TOML key, or by its rip-server token or flag."""
    lines = []
    for name, f in FIELDS.items():
        meta = f.metadata
        shown = shown_default(f)
        cli = meta["kind"] if meta["token"] else (meta["flag"] or "APP (the first argument)")
        head, other = (cli, f"TOML key {name}") if cli_first else (name, f"rip\\-server: {cli}")
        lines += [".TP", f"\\fB{roff(head)}\\fR (default: {roff(shown) or 'none'})",
                  roff(meta["help"][:1].upper() + meta["help"][1:]) + ".",
                  f"Environment: RIP_{name.upper()}; {roff(other) if cli_first else other}."]
    return lines


def rip_toml_page() -> str:
    lines = _header("rip.toml", 5, "settings of a rip-server app")
    lines += [".SH SYNOPSIS", "/etc/rip/\\fIAPP\\fR.toml",
              ".SH DESCRIPTION",
              roff("Each file /etc/rip/APP.toml defines the app APP. At boot and on every "
                   "systemctl daemon-reload, rip-generator turns the files into systemd units "
                   "(rip@APP.service and its balancer and workers). A file with a problem "
                   "gets only a rip@APP.service that fails to start, with the file's "
                   "problems in its journal (systemctl status rip@APP shows them); they are "
                   f"also written to {paths.GENERATOR_LOG}. ripctl check APP prints every "
                   "problem of a file; after fixing it, run systemctl daemon-reload."),
              ".PP",
              roff("Each setting may also come from the environment variable RIP_NAME (upper "
                   "case) or from rip-server's command line; the command line wins over the "
                   "environment, which wins over the file."),
              ".SH SETTINGS", *_settings(cli_first=False),
              ".SH EXAMPLE", ".nf",
              roff('app = "/srv/shop"          # a directory with app.py'),
              "workers = 4", roff('listen = ["http:8080"]'),
              roff('recycle = "r:10000,3600s,10r"'), ".fi",
              ".SH SEE ALSO", "\\fBripctl\\fR(8), \\fBrip\\-server\\fR(1)"]
    return "\n".join(lines) + "\n"


def rip_server_page() -> str:
    from ripsvc.cli import USAGE

    lines = _header("rip-server", 1, "run a Python web app: a balancer and its workers")
    lines += [".SH SYNOPSIS", ".nf", *(roff(line.strip().removeprefix("usage: "))
                                       for line in USAGE.splitlines()), ".fi",
              ".SH DESCRIPTION",
              roff("rip-server runs an ASGI, WSGI or aiohttp app in the foreground without "
                   "systemd: a balancer on the listening ports and N workers, each answering "
                   "one request at a time. SIGHUP (or rip-server restart) does a rolling "
                   "restart with no failed request; SIGINT and SIGTERM (or rip-server stop) "
                   "stop it gracefully. Its arguments may come in any order; the app is the "
                   "first one that exists. Under systemd the same settings live in "
                   "/etc/rip/APP.toml (see rip.toml(5) and ripctl(8))."),
              ".SH OPTIONS", *_settings(cli_first=True),
              ".SH SEE ALSO", "\\fBripctl\\fR(8), \\fBrip.toml\\fR(5)"]
    return "\n".join(lines) + "\n"


def rip_worker_page() -> str:
    from ripsvc.worker.__main__ import build_parser

    parser = build_parser()
    lines = _header("rip-worker", 8, "one worker of a rip-server app")
    lines += [".SH SYNOPSIS", roff(parser.format_usage().strip().removeprefix("usage: ")),
              ".SH DESCRIPTION", roff(parser.description or ""), ".PP",
              roff("Started by rip-server or by systemd (rip-worker@APP:ID.service) on a socket "
                   "passed with socket activation; it reports readiness, status and watchdog "
                   "pings with sd_notify. It is not meant to be run by hand except to try an "
                   "app."),
              ".SH OPTIONS"]
    for action in parser._actions:
        if action.dest == "help":
            continue
        head = ", ".join(action.option_strings) or action.dest.upper()
        lines += [".TP", f"\\fB{roff(head)}\\fR", roff(action.help or "")]
    lines += [".SH EXIT STATUS", ".TP", "0", "Stopped normally.",
              ".TP", f"{int(ExitCode.APP_LOAD_ERROR)}", "The app cannot be loaded.",
              ".TP", f"{int(ExitCode.RECYCLE)}", "Recycled: restart me.",
              ".SH SEE ALSO", "\\fBrip\\-server\\fR(1), \\fBripctl\\fR(8)"]
    return "\n".join(lines) + "\n"


PAGES = {"ripctl.8": ripctl_page, "rip.toml.5": rip_toml_page, "rip-server.1": rip_server_page,
         "rip-worker.8": rip_worker_page}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m ripsvc.manpages OUTDIR")
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        (out / name).write_text(page())
        print(out / name)


if __name__ == "__main__":
    main()
