"""`rip-server` and `ripctl`.

Until the balancer and the manager exist, `rip-server APP [http:PORT] [r:…] [--reload=…]`
serves the app through one worker listening on loopback TCP, in the foreground.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ripsvc.exitcodes import ExitCode
from ripsvc.worker.__main__ import main as worker_main

DEFAULT_PORT = 8000


def _serve_argv(tokens: list[str]) -> list[str]:
    """Translate rip-server's position-independent tokens into rip-worker arguments."""
    app: str | None = None
    port = DEFAULT_PORT
    passthrough: list[str] = []
    problems: list[str] = []
    for token in tokens:
        if token.startswith("-"):
            passthrough.append(token)
        elif token.startswith("http:"):
            value = token[5:]
            if not value.isdigit() or not 0 < int(value) < 65536:
                problems.append(f"{token!r}: expected http:PORT with PORT in 1..65535")
            else:
                port = int(value)
        elif token.startswith("r:"):
            passthrough += ["--recycle", token]
        elif token.startswith(("w:", "https:")) or token.isdigit():
            problems.append(f"{token!r}: needs the balancer, which this version does not have "
                            "yet (it serves one worker over plain HTTP)")
        elif app is None and (Path(token).exists() or ":" in token):
            app = token
        else:
            problems.append(f"{token!r}: not an app path, http:PORT or r:… token")
    if app is None:
        problems.append("no app given (a directory with app.py, file.py[:attr] or module:attr)")
    if problems:
        for problem in problems:
            print(f"rip-server: {problem}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    assert app is not None
    return [app, "--bind", f"tcp:127.0.0.1:{port}", *passthrough]


def serve_main(argv: list[str] | None = None) -> None:
    tokens = sys.argv[1:] if argv is None else argv
    if tokens in (["-h"], ["--help"]):
        print("usage: rip-server APP [http:PORT] [r:REQUESTS,SECONDSs,RELOADSr] "
              "[--reload=none|process|module] [rip-worker options]")
        return
    worker_main(_serve_argv(tokens))


def ripctl_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ripctl", description="Control rip-server apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run an app in the foreground (= rip-server)")
    serve.add_argument("tokens", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve_main(args.tokens)
