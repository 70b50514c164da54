"""Where a running app's sockets live, so that `ripctl APP` finds it by name alone."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not an app name (letters, digits, '.', '_', '-'; "
                         "at most 64)")
    return name


def runtime_root() -> Path:
    """/run/rip for root (as under systemd); the user's runtime directory otherwise."""
    if os.geteuid() == 0:
        return Path("/run/rip")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "rip" if xdg else Path(f"/tmp/rip-{os.geteuid()}")


def app_dir(name: str) -> Path:
    return runtime_root() / check_name(name)


def manager_socket(name: str) -> Path:
    return app_dir(name) / "manager.sock"


def state_dir(name: str) -> Path:
    """Where an app keeps what outlives it (host registry, generated certificates):
    systemd's StateDirectory= (/var/lib/rip/APP) under systemd, the same for root, else the
    user's state directory."""
    check_name(name)
    given = os.environ.get("STATE_DIRECTORY")
    if given:
        return Path(given.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/rip") / name
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "rip" / name
