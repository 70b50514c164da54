"""`python -m ripsvc.manager APP`: the manager of rip@APP.service, over systemd.

It reads /etc/rip/APP.toml (which rip-generator validated and turned into the app's units),
then runs the same manager as `rip-server`, with the systemd backend.
"""

from __future__ import annotations

import functools
import logging
import sys

from ripsvc import logs, paths
from ripsvc.cli import CONFIG_DIR, plan_from
from ripsvc.exitcodes import ExitCode
from ripsvc.process import run_and_exit
from ripsvc.settings import SettingsError, resolve


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m ripsvc.manager APP   (run by rip@APP.service)")
    name = args[0]
    logs.setup("manager", level=logging.INFO, APP=name)
    source = CONFIG_DIR / f"{name}.toml"
    try:
        paths.check_name(name)
        settings = resolve([], env={}, file=source)
    except (ValueError, SettingsError) as exc:
        for problem in getattr(exc, "problems", [str(exc)]):
            print(f"rip@{name}: {problem}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    plan = plan_from(settings, config_dir=source.parent)
    from ripsvc.manager.core import Manager
    from ripsvc.manager.systemd import SystemdSupervisor

    backend = functools.partial(SystemdSupervisor, config_dir=source.parent,
                                python=sys.executable)

    async def run() -> ExitCode:
        return await Manager(plan, backend).run()

    run_and_exit("manager", run())


if __name__ == "__main__":
    main()
