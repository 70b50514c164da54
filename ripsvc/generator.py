"""rip-generator: a systemd generator that turns every /etc/rip/APP.toml into units.

systemd runs it at boot and on each `daemon-reload` with three output directories (normal,
early, late); it writes into the normal one. Each file is validated with the same code as
`ripctl check`. An invalid one never gets a half-configured app: rip@APP gets a drop-in that
replaces the manager with `python -m ripsvc.generator --explain FILE`, so `systemctl start
rip@APP` fails, and its problems are in the unit's journal and `systemctl status rip@APP`,
whose description names `ripctl check APP`. The problems also go to the kernel log (outside
containers, whose kmsg is the host's) and to /run/rip/generator.log, which `ripctl status`
shows. A generator may not talk to D-Bus or to other processes: this one only reads files
and writes files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ripsvc import paths
from ripsvc.exitcodes import ExitCode
from ripsvc.settings import Settings, SettingsError, resolve
from ripsvc.units import DROPIN, app_units, command_line, render

CONFIG_DIR = Path("/etc/rip")
STATUS = paths.GENERATOR_LOG


def check(source: Path) -> tuple[Settings | None, list[str]]:
    """The settings of the app file `source`, or its problems (each naming the file)."""
    try:
        settings = resolve([], env={}, file=source)
    except SettingsError as exc:
        return None, exc.problems
    if settings.name != source.stem:
        return None, [f"{source}: name: {settings.name!r} differs from the file's name; the "
                      f"app is rip@{source.stem}"]
    return settings, []


def generate(config_dir: Path, out: Path, python: str) -> list[str]:
    """Write the units of every app into `out`: a working app for each valid file, a unit
    that fails with the file's problems for each invalid one. Return the problems found."""
    problems: list[str] = []
    for source in sorted(config_dir.glob("*.toml")):
        name = source.stem
        try:
            paths.check_name(name)
        except ValueError as exc:  # no unit can have this name: the log is all there is
            problems.append(f"{source}: {exc}; no unit for this file")
            continue
        settings, found = check(source)
        if settings is None:
            problems += found
            files = invalid_app_units(name, source, python)
        else:
            files = app_units(settings, source, python)
        for relative, text in files.items():
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        if settings is not None:
            # the app's ports open with its manager (and stay open across its restarts)
            wants = out / f"rip@{name}.service.wants"
            wants.mkdir(exist_ok=True)
            (wants / f"rip-balancer@{name}.socket").symlink_to(
                f"../rip-balancer@{name}.socket")
    return problems


def invalid_app_units(name: str, source: Path, python: str) -> dict[str, str]:
    """The drop-in of rip@NAME for an invalid file: starting it shows why it cannot run."""
    explain = command_line([python, "-m", "ripsvc.generator", "--explain", str(source)])
    return {f"rip@{name}.service.d/{DROPIN}": render(
        "app-invalid.conf.j2", name=name, source=str(source), explain=explain)}


def explain(source: Path) -> int:
    """What rip@APP of an invalid file runs instead of its manager: the file's problems as
    they are now, on stderr (the unit's journal, shown by `systemctl status`)."""
    name = source.stem
    _, problems = check(source)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"rip@{name} cannot start: fix {source} (`ripctl check {name}` lists its "
              "problems), then run `systemctl daemon-reload`", file=sys.stderr)
    else:
        print(f"rip@{name} cannot start: {source} is valid now, but systemd still has the "
              "units made when it was not; run `systemctl daemon-reload`, then start "
              f"rip@{name} again", file=sys.stderr)
    return ExitCode.USAGE


def report(problems: list[str]) -> None:
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    STATUS.write_text("".join(f"{p}\n" for p in problems))
    if not problems:
        return
    lines = [f"rip-generator: {p}" for p in problems]
    if os.environ.get("container"):  # noqa: SIM112 (systemd's name)
        print("\n".join(lines), file=sys.stderr)
        return
    try:
        with open("/dev/kmsg", "w") as kmsg:
            for line in lines:
                kmsg.write(f"<3>{line}\n")  # priority 3: error
    except OSError:
        print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--explain":
        sys.exit(explain(Path(args[1])))
    if not args or args[0].startswith("-"):
        sys.exit("usage: rip-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n"
                 "       python -m ripsvc.generator --explain /etc/rip/APP.toml")
    report(generate(CONFIG_DIR, Path(args[0]), sys.executable))


if __name__ == "__main__":
    main()
