"""`ripctl install APP --app PATH [tokens…] [--enable] [--now]`: an app under systemd.

The tokens are rip-server's (`w:4 http:8080 --max-body 10M …`), checked by the same settings
code, every problem at once. The app file `/etc/rip/APP.toml` gets the app's absolute path and
every setting that differs from its default; then `systemctl daemon-reload` (rip-generator
turns the file into units), and with --enable/--now `systemctl enable`/`start`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ripsvc import paths
from ripsvc.apploader import absolute_spec
from ripsvc.exitcodes import ExitCode
from ripsvc.settings import FIELDS, Settings, SettingsError, resolve


class InstallError(Exception):
    pass


def toml_value(value: Any) -> str:
    """A TOML literal that the setting's parser reads back as `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def app_file(settings: Settings) -> str:
    """The app file's text: the app, then each setting that is not its default."""
    lines = [f"# /etc/rip/{settings.name}.toml, written by `ripctl install` "
             "(ripctl check validates it; the settings are in the README)"]
    for name, f in FIELDS.items():
        value = getattr(settings, name)
        if name == "name" or (name != "app" and value == f.metadata["parse"](f.default)):
            continue
        lines.append(f"{name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def install(name: str, app: str, tokens: list[str], config_dir: Path,
            force: bool = False) -> Path:
    """Write config_dir/NAME.toml; raise InstallError/SettingsError with what is wrong."""
    paths.check_name(name)
    target = config_dir / f"{name}.toml"
    if target.exists() and not force:
        raise InstallError(f"{target} exists; edit it, or use --force to replace it")
    settings = resolve([absolute_spec(app, Path.cwd()), "--name", name, *tokens], env={})
    # Written beside the target under the same name, read back, then moved in place: the
    # generator never sees a half-written or unreadable file.
    staging = config_dir / ".ripctl-install"
    staging.mkdir(parents=True, exist_ok=True)
    partial = staging / target.name
    try:
        partial.write_text(app_file(settings))
        partial.chmod(0o644)
        if resolve([], env={}, file=partial) != settings:
            raise InstallError("internal: the written file does not read back the same")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        staging.rmdir()
    return target


def main(name: str, app: str, tokens: list[str], enable: bool, now: bool, force: bool,
         config_dir: Path) -> int:
    try:
        target = install(name, app, tokens, config_dir, force)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"ripctl install: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    except (InstallError, ValueError) as exc:
        print(f"ripctl install: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"ripctl install: cannot write the app file: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    print(f"wrote {target}")
    steps = [["systemctl", "daemon-reload"]]
    if enable:
        steps.append(["systemctl", "enable", *(["--now"] if now else []), f"rip@{name}"])
    elif now:
        steps.append(["systemctl", "start", f"rip@{name}"])
    for step in steps:
        done = subprocess.run(step, check=False)
        if done.returncode != 0:
            print(f"ripctl install: {' '.join(step)} failed ({done.returncode})",
                  file=sys.stderr)
            return ExitCode.FAILURE
    print(f"rip@{name}: " + ("started" if now else f"systemctl start rip@{name} to start it")
          + (", enabled at boot" if enable else ""))
    return ExitCode.OK

