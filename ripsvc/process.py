"""The top of every rip process: run its main coroutine on uvloop and exit with its code."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

from ripsvc import logs
from ripsvc.exitcodes import ExitCode
from ripsvc.sd import ActivationError
from ripsvc.sockets import SocketError


def run_and_exit(role: str, main: Coroutine[Any, Any, ExitCode]) -> NoReturn:
    """Only entry points exit: library code raises, and the errors a process can meet while
    setting up its sockets end it here with one clear log line."""
    # Imported here, by the processes that run a loop: the parsers of the commands (which
    # the man pages are made from at package build time) do not need uvloop.
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(main)
    except (SocketError, ActivationError, OSError) as exc:
        logs.get(role).error("%s", exc)
        sys.exit(ExitCode.FAILURE)
    sys.exit(code)


def set_priority(role: str, nice: int) -> None:
    """Run at scheduling priority `nice` (-20..19), or say why not and run as it is.

    Lowering the value needs root or CAP_SYS_NICE: an unprivileged rip-server runs its
    balancer at its own priority. Under systemd the unit's Nice= has set it already (and the
    units' system-call filter refuses setpriority), so nothing is called then.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current == nice:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        logs.get(role).info("running at nice %d: nice %d needs root or CAP_SYS_NICE",
                            current, nice)
