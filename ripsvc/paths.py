"""Where a running app's sockets and state live, so that `ripctl APP` finds it by name alone.

Every `/run/rip` and `/var/lib/rip` path of rip-server is made here: the units' templates and
the generator get theirs from these names too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Root's runtime directory of rip-server, and systemd's: rip@APP.service's
#: RuntimeDirectory=rip/APP is SYSTEM_RUNTIME/APP.
SYSTEM_RUNTIME = Path("/run/rip")
#: Root's state directory, and systemd's: rip@APP.service's StateDirectory=rip/APP.
SYSTEM_STATE = Path("/var/lib/rip")
#: rip-worker@APP:ID.socket's ListenStream= directory (shared by every app's workers).
WORKER_SOCKETS = SYSTEM_RUNTIME / "workers"
#: What rip-generator last found wrong in /etc/rip (shown by `ripctl status`).
GENERATOR_LOG = SYSTEM_RUNTIME / "generator.log"

MANAGER_SOCKET = "manager.sock"  # in an app's runtime directory
BALANCER_CONTROL = "balancer.ctl"  # likewise


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not an app name (letters, digits, '.', '_', '-'; "
                         "at most 64)")
    return name


def runtime_root() -> Path:
    """/run/rip for root (as under systemd); the user's runtime directory otherwise."""
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "rip" if xdg else Path(f"/tmp/rip-{os.geteuid()}")


def app_dir(name: str) -> Path:
    return runtime_root() / check_name(name)


def system_app_dir(name: str) -> Path:
    """The app's runtime directory under systemd, whoever asks (the generator, the units)."""
    return SYSTEM_RUNTIME / check_name(name)


def system_state_dir(name: str) -> Path:
    """The app's state directory under systemd, whoever asks."""
    return SYSTEM_STATE / check_name(name)


def manager_socket(name: str) -> Path:
    return app_dir(name) / MANAGER_SOCKET


def balancer_control(runtime: Path) -> Path:
    """The balancer's control socket in an app's runtime directory."""
    return runtime / BALANCER_CONTROL


def worker_socket(app: str, ident: str) -> Path:
    """Under systemd: the socket of worker `ident` of `app` (rip-worker@APP:ID.socket)."""
    return WORKER_SOCKETS / f"{app}:{ident}.sock"


def state_dir(name: str) -> Path:
    """Where an app keeps what outlives it (host registry, generated certificates):
    systemd's StateDirectory= (/var/lib/rip/APP) under systemd, the same for root, else the
    user's state directory."""
    check_name(name)
    given = os.environ.get("STATE_DIRECTORY")
    if given:
        return Path(given.split(":")[0])
    if os.geteuid() == 0:
        return system_state_dir(name)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "rip" / name
