"""The balancer's and the workers' command lines, for both supervisors.

The embedded supervisor runs `python -m ripsvc.balancer ARGS` and `python -m ripsvc.worker
ARGS`; under systemd the generator writes the balancer's ARGS into its unit
(units.app_units) and the manager the workers' into their drop-ins. Both come from here, from
the app's settings: the settings a process receives are written by `Settings.args_for` and
read back by the parser that `settings.add_arguments` declared in the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ripsvc import edge, paths
from ripsvc.settings import Settings
from ripsvc.sockets import Bind


def balancer_args(settings: Settings, binds: Sequence[Bind], runtime: Path,
                  state: Path) -> list[str]:
    """The balancer's arguments: the app's name, the control socket in `runtime`, the
    settings it receives (those that differ from their default), and the edge for `binds`,
    the listening addresses with the ports actually used (the certificate's copy in
    `runtime`, the host registry in `state`: edge.py)."""
    return ["--app", settings.name, "--control", str(paths.balancer_control(runtime)),
            *settings.args_for("balancer"), *edge.balancer_args(binds, runtime, state)]


def worker_args(settings: Settings, app: str, ident: str, *, handoff: bool,
                websocket: bool = False) -> list[str]:
    """A worker's arguments: `app` as its supervisor names it (under systemd, made absolute
    for the unit's working directory), its id, and the settings it receives. `handoff`: the
    worker announces a reached recycling limit and waits for a successor (--recycle-handoff).
    `websocket`: a WebSocket worker (--websocket)."""
    return [app, "--name", settings.name, "--id", ident,
            *(["--recycle-handoff"] if handoff else []),
            *(["--websocket"] if websocket else []), *settings.args_for("worker")]
