from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import WorkerProcess


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rip-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_worker(short_tmp: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(app, *args, env=…, ready=True) → a running WorkerProcess, cleaned up after."""
    started: list[WorkerProcess] = []

    def start(app: str, *args: str, env: dict[str, str] | None = None,
              ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(short_tmp, app, args, env, name=f"w{len(started)}")
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With RIP_FORBID_SKIPS=1 (CI), a skipped or xfailed test fails the run."""
    if not os.environ.get("RIP_FORBID_SKIPS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    skipped = len(stats.get("skipped", [])) + len(stats.get("xfailed", []))
    if skipped:
        print(f"\nRIP_FORBID_SKIPS: {skipped} test(s) skipped or xfailed: failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
