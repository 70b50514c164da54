from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import TEST_APPS, BalancerProcess, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
COMPILED_STAMP = ROOT / "ripsvc" / ".compiled"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite tests the hot path as it ships: compiled by mypyc (`make compile` builds it
    into the tree). Extensions older than a module's source would test yesterday's code, so
    they stop the run; RIPSVC_COMPILE=0 tests the plain Python package, with no extension about."""
    extensions = sorted(ROOT.glob("ripsvc/**/*.so"))
    if os.environ.get("RIPSVC_COMPILE", "1") == "0":
        if extensions:
            pytest.exit(f"RIPSVC_COMPILE=0 but the tree holds compiled modules ({extensions[0]}); "
                        "`make clean` removes them", returncode=2)
        return
    sources = list(ROOT.glob("ripsvc/**/*.py"))
    built = COMPILED_STAMP.stat().st_mtime if COMPILED_STAMP.exists() and extensions else 0.0
    changed = [path for path in sources if path.stat().st_mtime > built]
    if changed:
        pytest.exit(f"the compiled hot path is missing or older than {changed[0].name}: run "
                    "`make compile` (or set RIPSVC_COMPILE=0 to test the interpreted package)",
                    returncode=2)


@pytest.fixture(scope="session", autouse=True)
def private_state_directory() -> Iterator[Path]:
    """rip-server run as root keeps its state in /var/lib/rip/APP: the tests' apps keep
    theirs here instead (STATE_DIRECTORY is how systemd names it, and how paths.state_dir
    finds it)."""
    path = Path(tempfile.mkdtemp(prefix="rip-state-"))
    old = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(path)
    yield path
    if old is None:
        os.environ.pop("STATE_DIRECTORY", None)
    else:
        os.environ["STATE_DIRECTORY"] = old
    shutil.rmtree(path, ignore_errors=True)


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


class Stack:
    """A balancer in front of real workers, all started as systemd would start them."""

    def __init__(self, balancer: BalancerProcess, workers: list[WorkerProcess]) -> None:
        self.balancer = balancer
        self.workers = workers
        self.websocket_workers: list[WorkerProcess] = []

    @property
    def port(self) -> int:
        return self.balancer.port

    @property
    def control(self) -> str:
        return self.balancer.control_path

    def pids(self) -> list[str]:
        return [str(w.pid) for w in self.workers]


@pytest.fixture
def start_stack(short_tmp: Path) -> Iterator[Callable[..., Stack]]:
    """start_stack(workers=2, app=probe, worker_args=(), args=(), stdout=None,
    balancer_env=None, websockets=0) → a running Stack (`stdout`: a file for the balancer's
    stdout instead of its log; `balancer_env`: more environment for the balancer;
    `websockets`: WebSocket workers, stack.websocket_workers)."""
    procs: list[BalancerProcess | WorkerProcess] = []

    def start(workers: int = 2, app: str = str(TEST_APPS / "probe.py"),
              worker_args: tuple[str, ...] = ("--recycle", "r:0,0s,0r"),
              args: tuple[str, ...] = (), stdout: str | None = None,
              balancer_env: dict[str, str] | None = None, websockets: int = 0) -> Stack:
        started = []
        stack = len([p for p in procs if isinstance(p, BalancerProcess)])  # several per test
        prefix = f"s{stack}" if stack else ""
        for n in range(workers):
            worker = WorkerProcess(short_tmp, app, worker_args, name=f"{prefix}w{n + 1}")
            procs.append(worker)
            started.append(worker)
        websocket_workers = []
        for n in range(websockets):
            worker = WorkerProcess(short_tmp, app, ("--websocket", *worker_args),
                                   name=f"{prefix}ws{n + 1}")
            procs.append(worker)
            websocket_workers.append(worker)
        for worker in started + websocket_workers:
            worker.wait_ready()
        joins = [f"--worker={n + 1}={w.socket_path}" for n, w in enumerate(started)]
        joins += [f"--websocket-worker=ws{n + 1}={w.socket_path}"
                  for n, w in enumerate(websocket_workers)]
        balancer = BalancerProcess(short_tmp, [*joins, *args], env=balancer_env,
                                   name=f"{prefix}balancer", stdout=stdout)
        procs.append(balancer)
        balancer.wait_ready()
        stack = Stack(balancer, started)
        stack.websocket_workers = websocket_workers
        return stack

    yield start
    for proc in reversed(procs):
        proc.close()


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
