"""The systemd units of rip-server, rendered with jinja2 from the templates in `units/`.

Three kinds, written by three parties:
- the static templates (`rip@.service`, `rip-balancer@.service`, `rip-worker@.service`,
  `rip-worker@.socket`) and the generator executable, rendered once at install time with the
  interpreter's path, and the sysusers.d entry of the user `rip` (`python -m ripsvc.units
  UNIT_DIR GENERATOR_DIR [--sysusers-dir DIR]`: the package, the test suite);
- per app, from `/etc/rip/APP.toml`: the balancer's socket unit and the drop-ins of the
  manager and balancer instances, written by `rip-generator` (ripsvc/generator.py);
- per worker instance (`rip-worker@APP:ID`): drop-ins with the app's command line, user and
  paths, written by the app's manager before it starts the instance. systemd offers no
  drop-in directory shared by the instances of one app only, so the manager writes them; a
  unit not loaded yet picks them up without a daemon-reload.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2

from ripsvc import launch, paths
from ripsvc.apploader import absolute_spec, parse_spec
from ripsvc.balancer.options import nice_for
from ripsvc.settings import Settings
from ripsvc.sockets import Bind

TEMPLATES = Path(__file__).with_name("units")
STATIC = ("rip@.service", "rip-balancer@.service", "rip-worker@.service", "rip-worker@.socket")
GENERATOR = "rip-generator"
SYSUSERS = "rip-server.sysusers"  # installed as sysusers.d/rip-server.conf: the user `rip`
DROPIN = "50-rip.conf"  # the name of every drop-in we write
INSTANCE_DIR = Path("/run/systemd/system")  # where the manager writes worker drop-ins

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          autoescape=False)
_SAFE = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")


def quote(arg: str) -> str:
    """One word of an ExecStart= line: specifiers (%) and variables ($) taken literally."""
    if "\n" in arg or "\0" in arg:
        raise ValueError(f"{arg!r}: a unit setting cannot hold a newline")
    text = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_line(argv: list[str]) -> str:
    return " ".join(quote(arg) for arg in argv)


def render(template: str, **values: Any) -> str:
    return _env.get_template(template).render(**values)


# -- installed once -------------------------------------------------------------------------
def static_units(python: str) -> dict[str, str]:
    """The unit templates and the generator, for an interpreter that has ripsvc."""
    units = {name: render(f"{name}.j2", python=python,
                          ripctl=command_line([python, "-m", "ripsvc.cli"]),
                          runtime=paths.SYSTEM_RUNTIME, worker_sockets=paths.WORKER_SOCKETS)
             for name in STATIC}
    units[GENERATOR] = render(f"{GENERATOR}.j2", python=python,
                              sys_path=repr(module_path(python)))
    return units


_PATH_QUERY = """import json, os, sys
paths = [p for p in sys.path if os.path.isabs(p)]
try:
    import ripsvc
except ImportError:  # not installed yet (a package build): its directory is on sys.path later
    pass
else:
    here = os.path.dirname(os.path.dirname(os.path.abspath(ripsvc.__file__)))
    paths = [here] + [p for p in paths if p != here]
print(json.dumps(paths))
"""


def module_path(python: str) -> list[str]:
    """The sys.path of `python` after its site processing (PYTHON* variables ignored), with
    the directory of ripsvc first (an editable install adds it through an import hook)."""
    done = subprocess.run([python, "-E", "-c", _PATH_QUERY], capture_output=True, text=True,
                          check=True, cwd="/")
    paths: list[str] = json.loads(done.stdout)
    return paths


def install(unit_dir: Path, generator_dir: Path, python: str,
            sysusers_dir: Path | None = None) -> list[Path]:
    written = []
    files = static_units(python)
    if sysusers_dir is not None:
        files[SYSUSERS] = (TEMPLATES / SYSUSERS).read_text()
    for name, text in files.items():
        target = {GENERATOR: generator_dir / name,
                  SYSUSERS: (sysusers_dir or unit_dir) / "rip-server.conf"}.get(
                      name, unit_dir / name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755 if name == GENERATOR else 0o644)
        written.append(target)
    return written


# -- per app (the generator) -----------------------------------------------------------------
def listen_stream(bind: Bind) -> str:
    if bind.path is not None:
        return bind.path
    assert bind.host is not None
    host = f"[{bind.host}]" if ":" in bind.host else bind.host
    return f"{host}:{bind.port}"


def app_units(settings: Settings, source: Path, python: str) -> dict[str, str]:
    """Relative path → text of everything the generator writes for one valid app."""
    name = settings.name
    common = {"name": name, "source": str(source), "python": python}
    # The manager (root) puts the certificate in its runtime directory and keeps the host
    # registry in its state directory (rip@.service's RuntimeDirectory= and StateDirectory=).
    balancer_args = command_line(launch.balancer_args(
        settings, settings.binds(), paths.system_app_dir(name), paths.system_state_dir(name)))
    return {
        f"rip-balancer@{name}.socket": render(
            "app-balancer.socket.j2", listen=[listen_stream(b) for b in settings.binds()],
            **common),
        f"rip@{name}.service.d/{DROPIN}": render(
            "app-manager.conf.j2", stop_timeout=_manager_stop_timeout(settings), **common),
        f"rip-balancer@{name}.service.d/{DROPIN}": render(
            "app-balancer.conf.j2", args=balancer_args,
            # The units' balancer logs to journald: its access log too, unless turned off.
            nice=nice_for(settings.balancer_nice, settings.access_log),
            # A stop may first wait out shutdown_delay, serving.
            stop_timeout=f"{settings.shutdown_delay + settings.graceful_timeout + 10:g}s",
            **common),
    }


def _manager_stop_timeout(settings: Settings) -> str:
    """rip@.service's TimeoutStopSec= (120 s), unless the balancer's shutdown_delay and
    graceful_timeout, then the workers' stop, may take longer."""
    needed = settings.shutdown_delay + 2 * settings.graceful_timeout + 20
    return "" if needed <= 120 else f"{needed:g}s"


# -- per worker instance (the manager) -------------------------------------------------------
def worker_unit(app: str, ident: str) -> str:
    return f"rip-worker@{app}:{ident}"


def app_command(settings: Settings, config_dir: Path) -> tuple[str, Path]:
    """The app argument for a worker whose working directory is the second value: a path
    made absolute (relative ones are relative to the app's config file), or module:attr.
    Symbolic links are kept, not resolved here: a worker started later (a rolling restart)
    follows a `current` link that a deploy switched to a new release directory."""
    spec = parse_spec(settings.app, cwd=config_dir)  # checked (it resolves links)
    text = settings.app
    location, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
    if absolute_spec(text, config_dir) == text and not location.startswith("/"):
        return text, spec.directory  # module:attr, imported from the working directory
    path = Path(os.path.abspath(config_dir / location))
    return str(path) + sep + attr, path if spec.module == "app" and path.is_dir() \
        else path.parent


def worker_dropins(settings: Settings, ident: str, args: list[str], env: dict[str, str],
                   python: str, directory: Path, watchdog_sec: float) -> dict[str, str]:
    """Unit file name → drop-in text for one worker instance (service and socket)."""
    unit = worker_unit(settings.name, ident)
    service = render(
        "worker-instance.conf.j2", name=settings.name, python=python, user=settings.user,
        args=command_line(args), directory=quote(str(directory)),
        watchdog=f"{watchdog_sec:g}s" if watchdog_sec else "0",
        stop_timeout=f"{settings.graceful_timeout + 10:g}s",
        environment=[(k, quote(v)) for k, v in sorted(env.items())],
        environment_file=settings.environment_file,
        read_write_paths=settings.read_write_paths,
        memory_high=settings.memory_high, memory_max=settings.memory_max)
    return {f"{unit}.service": service,
            f"{unit}.socket": render("worker-socket.conf.j2", name=settings.name)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ripsvc.units",
                                description="Install rip-server's unit templates and generator.")
    p.add_argument("unit_dir", type=Path, help="e.g. /lib/systemd/system")
    p.add_argument("generator_dir", type=Path, help="e.g. /lib/systemd/system-generators")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter the units run (default: this one)")
    p.add_argument("--sysusers-dir", type=Path,
                   help="also install the user `rip` there, e.g. /usr/lib/sysusers.d")
    args = p.parse_args(argv)
    for path in install(args.unit_dir, args.generator_dir, args.python, args.sysusers_dir):
        print(path)


if __name__ == "__main__":
    main()
