"""The top of every rip process: run its main coroutine on uvloop and exit with its code."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

import uvloop

from ripsvc import logs
from ripsvc.exitcodes import ExitCode
from ripsvc.sd import ActivationError
from ripsvc.sockets import SocketError


def run_and_exit(role: str, main: Coroutine[Any, Any, ExitCode]) -> NoReturn:
    """Only entry points exit: library code raises, and the errors a process can meet while
    setting up its sockets end it here with one clear log line."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(main)
    except (SocketError, ActivationError, OSError) as exc:
        logs.get(role).error("%s", exc)
        sys.exit(ExitCode.FAILURE)
    sys.exit(code)
