"""The hot-path modules that the build compiles to C with mypyc, and whether they were.

Every request runs through these modules in the balancer and in each worker. Compiled, the
same source costs about 40 % fewer instructions per request (docs/performance.md); the build
(setup.py) compiles them, with the type annotations the code already carries for mypy.

A package built without them still works, only slower: `state()` says so, and the balancer
and workers log it at start, so it cannot go unnoticed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

#: The modules compiled by setup.py, in dotted form.
MODULES = (
    "ripsvc.body",
    "ripsvc.http11",
    "ripsvc.balancer.accesslog",
    "ripsvc.balancer.core",
    "ripsvc.balancer.exchange",
    "ripsvc.balancer.client",
    "ripsvc.balancer.metrics",
    "ripsvc.balancer.pool",
    "ripsvc.balancer.tunnel",
    "ripsvc.balancer.upstream",
    "ripsvc.worker.asgi",
    "ripsvc.worker.core",
    "ripsvc.worker.http",
    "ripsvc.worker.request",
    "ripsvc.worker.wsgi",
)


def source_paths(root: Path) -> list[Path]:
    """The modules' source files under the project's root directory."""
    return [root.joinpath(*name.split(".")).with_suffix(".py") for name in MODULES]


def interpreted() -> tuple[list[str], list[str]]:
    """(loaded, interpreted): the hot-path modules this process has imported (the balancer
    does not import the worker's), and those of them that run from Python source."""
    loaded = [name for name in MODULES if name in sys.modules]
    return loaded, [name for name in loaded
                    if (sys.modules[name].__file__ or "").endswith(".py")]


def state() -> tuple[bool, str]:
    """(compiled, a line for the log): is this process's hot path compiled?"""
    loaded, missing = interpreted()
    if not missing:
        return True, "hot path compiled (mypyc)"
    if missing == loaded:
        return False, ("hot path interpreted: not compiled with mypyc, about 10 % fewer "
                       "requests/s (docs/performance.md)")
    return False, "hot path partly compiled; interpreted: " + ", ".join(missing)


def log_state(log: logging.Logger) -> None:
    """At start: a compiled hot path is worth a debug line, an interpreted one a warning."""
    ok, line = state()
    if ok:
        log.debug("%s", line)
    else:
        log.warning("%s", line)
