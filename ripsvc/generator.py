"""rip-generator: a systemd generator that turns every /etc/rip/APP.toml into units.

systemd runs it at boot and on each `daemon-reload` with three output directories (normal,
early, late); it writes into the normal one. Each file is validated with the same code as
`ripctl check`; an invalid one produces no unit at all for its app (never a half-configured
app) and its problems go to the kernel log (outside containers, whose kmsg is the host's) and
to /run/rip/generator.log, which `ripctl status` shows. A generator may not talk to D-Bus or
to other processes: this one only reads files and writes files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ripsvc import paths
from ripsvc.settings import SettingsError, resolve
from ripsvc.units import app_units

CONFIG_DIR = Path("/etc/rip")
STATUS = Path("/run/rip/generator.log")


def generate(config_dir: Path, out: Path, python: str) -> list[str]:
    """Write the units of every valid app into `out`; return the problems found."""
    problems: list[str] = []
    for source in sorted(config_dir.glob("*.toml")):
        name = source.stem
        try:
            paths.check_name(name)
            settings = resolve([], env={}, file=source)
        except ValueError as exc:
            problems.append(f"{source}: {exc}")
            continue
        except SettingsError as exc:
            problems += exc.problems
            continue
        if settings.name != name:
            problems.append(f"{source}: name: {settings.name!r} differs from the file's name; "
                            f"the app is rip@{name}")
            continue
        for relative, text in app_units(settings, source, python).items():
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        # the app's ports open with its manager (and stay open across its restarts)
        wants = out / f"rip@{name}.service.wants"
        wants.mkdir(exist_ok=True)
        (wants / f"rip-balancer@{name}.socket").symlink_to(f"../rip-balancer@{name}.socket")
    return problems


def report(problems: list[str]) -> None:
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    STATUS.write_text("".join(f"{p}\n" for p in problems))
    if not problems:
        return
    lines = [f"rip-generator: {p} (no units for this app)" for p in problems]
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
    if not args:
        sys.exit("usage: rip-generator NORMAL_DIR [EARLY_DIR LATE_DIR]")
    report(generate(CONFIG_DIR, Path(args[0]), sys.executable))


if __name__ == "__main__":
    main()
