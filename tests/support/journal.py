"""Running one of our processes under a private journald (see journal_ns.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.procs import REPO


def run_under_journal(workdir: Path, argv: list[str], ready: Callable[[], bool],
                      action: Callable[[], None]) -> list[dict[str, str]]:
    """Start `argv` with its stderr as a journal stream; once `ready()`, run `action()`, stop
    the process with SIGTERM and return every journal entry as a dict."""
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "--", sys.executable,
         str(REPO / "tests" / "support" / "journal_ns.py"), str(workdir), "--", *argv],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"not ready: {proc.communicate(timeout=5)[0]}")
            time.sleep(0.05)
        action()
        (workdir / "stop").write_text("")
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (workdir / "exit").read_text() == "0"
    return [json.loads(line) for line in (workdir / "journal.json").read_text().splitlines()]
