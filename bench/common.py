"""What the benchmarks here share: their settings and command line, the processes they start
and stop, wrk and its report, CPU accounting, the machine's facts, installing the tools, and
bench/results/compare.json, where each part of the comparison keeps its figures.

The scripts run with bench/ on sys.path (python bench/NAME.py): they import each other by
their names. Every process started here runs in a session of its own and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ripsvc.ctlclient import UnixHTTPConnection

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS = RESULTS_DIR / "compare.json"
VENV_BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
# The children must not take our terminal's journal or notify socket for theirs.
CHILD_ENV = {
    key: value for key, value in os.environ.items()
    if key not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")
}


# -- the run's settings ---------------------------------------------------------------------------

class Load(Protocol):
    """wrk's -t and -c: a benchmark's Settings, or what bench/worker.py runs."""

    @property
    def threads(self) -> int: ...

    @property
    def connections(self) -> int: ...


@dataclass(frozen=True)
class Settings:
    """What a run of the benchmarks does (their command lines: load_parser)."""

    duration: int
    rounds: int
    warmup: int
    threads: int
    connections: int
    memory_requests: int
    profile: bool
    profile_seconds: int
    comparison: bool  # the configurations' rounds and the memory check (not with --only)
    rolling: bool
    cold_start: bool


# -- processes ------------------------------------------------------------------------------------

@dataclass
class Proc:
    """A process we started in a session of its own; its output goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


@dataclass
class Stack:
    """The processes of one configuration, in a directory of their own."""

    config: str
    dir: Path
    tools: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    access_log: Path | None = None
    #: Where its processes start, and what their environment adds: bench/ab.py runs the rip
    #: of another tree (its directory, and PYTHONPATH pointing there).
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, command: list[str], stdout: Path | None = None,
              env: dict[str, str] | None = None) -> Proc:
        """Start a process in the stack's root; stdout goes to `stdout` if given, else with
        stderr; `env` is added to the environment."""
        output = self.dir / f"{name}.out"
        with contextlib.ExitStack() as files:
            err = files.enter_context(output.open("wb"))
            out = files.enter_context(stdout.open("wb")) if stdout else err
            # A session of its own: only stop_process() signals it, not a Ctrl-C on the terminal.
            process = subprocess.Popen(
                command, cwd=self.root, env={**CHILD_ENV, **self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err, start_new_session=True,
            )
        proc = Proc(name, process, output)
        self.procs.append(proc)
        return proc

    def pid(self, name: str) -> int:
        return next(proc.process.pid for proc in self.procs if proc.name == name)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is not None:
                raise RuntimeError(
                    f"{self.config}: {proc.name} exited with status {proc.process.returncode}; "
                    f"its output:\n{proc.tail()}"
                )

    def stop(self) -> None:
        """Stop the front first, then what it talks to."""
        for proc in reversed(self.procs):
            stop_process(proc)


def stop_process(proc: Proc) -> None:
    """SIGTERM the process we started (by PID); SIGKILL its process group if it lingers."""
    process = proc.process
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  {proc.name} (pid {process.pid}) ignored SIGTERM: killing it", flush=True)
        # The group is the session we created for it (nginx's and gunicorn's workers are in it);
        # it exists as long as the unreaped leader does.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_status(connection: http.client.HTTPConnection, path: str) -> int:
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_ready(proc: Proc, connect: Callable[[], http.client.HTTPConnection], path: str) -> None:
    """Poll GET `path` until it answers 200; fail with the process's output otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with status {proc.process.returncode} before it was "
                f"ready; its output:\n{proc.tail()}"
            )
        try:
            status = get_status(connect(), path)
            if status == 200:
                return
            last_error = f"HTTP {status}"
        except OSError as error:  # includes the socket file not existing yet
            last_error = repr(error)
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} did not answer GET {path} within {READY_TIMEOUT:g} s ({last_error}); "
        f"its output:\n{proc.tail()}"
    )


def over_unix(path: Path) -> Callable[[], http.client.HTTPConnection]:
    return lambda: UnixHTTPConnection(path, timeout=1.0)


def over_tls(port: int) -> Callable[[], http.client.HTTPConnection]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
    return lambda: http.client.HTTPSConnection("127.0.0.1", port, timeout=1.0, context=context)


def over_tcp(port: int) -> Callable[[], http.client.HTTPConnection]:
    return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)


# -- wrk ------------------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class Run:
    """One measured wrk run against one server (or configuration)."""

    server: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int


def to_ms(value: str) -> float:
    """A wrk duration such as 105.00us, 1.23ms or 2.00s, in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise ValueError(f"unexpected wrk duration {value!r}")
    return float(match[1]) * UNITS_MS[match[2]]


def search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        raise ValueError(f"no {pattern!r} in wrk's output:\n{text}")
    return match


def parse_wrk(text: str, server: str, round_: int) -> Run:
    """The figures of a `wrk --latency` report."""
    socket_errors = 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        socket_errors = sum(int(count) for count in errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Run(
        server=server,
        round=round_,
        requests_per_s=float(search(r"^Requests/sec:\s+([\d.]+)", text)[1]),
        p50_ms=to_ms(search(r"^\s+50%\s+(\S+)", text)[1]),
        p99_ms=to_ms(search(r"^\s+99%\s+(\S+)", text)[1]),
        requests=int(search(r"^\s+(\d+) requests in", text)[1]),
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def wrk_command(settings: Load, url: str, seconds: int, close: bool = False) -> list[str]:
    return [
        "wrk", f"-t{settings.threads}", f"-c{settings.connections}", f"-d{seconds}s",
        "--latency", *(["-H", "Connection: close"] if close else []), url,
    ]


def run_wrk(settings: Load, url: str, seconds: int, close: bool = False) -> str:
    result = subprocess.run(
        wrk_command(settings, url, seconds, close), capture_output=True, text=True,
        timeout=seconds + 30, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


# -- CPU ------------------------------------------------------------------------------------------

def process_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # field 3 on
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """The live descendants of a process."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def tree_ticks(pid: int) -> int:
    """CPU ticks of a process and of its live descendants (nginx's or gunicorn's workers)."""
    total = 0
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += process_ticks(member)
    return total


def children_cpu_seconds() -> float:
    """CPU time of our reaped children (wrk: the servers are reaped only when they stop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_ticks() -> tuple[int, int]:
    """Busy (user, nice, system, irq, softirq) and stolen clock ticks of all CPUs."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


@dataclass
class CpuMeter:
    """CPU use over a time span in % of one core: the stack's processes, wrk, all CPUs
    ("machine", at most nproc x 100), what the stack and wrk do not account for ("others":
    other processes, including short-lived ones, and kernel work not charged to a process: near
    0 on a quiet machine) and the time the hypervisor gave to other guests ("steal")."""

    stack: Stack
    reaped: str = "wrk"  # what the children we reap while measuring are (they get its CPU)
    ticks: dict[str, int] = field(default_factory=dict)
    wrk_seconds: float = 0.0
    machine: tuple[int, int] = (0, 0)
    started: float = 0.0
    percent: dict[str, float] = field(default_factory=dict)  # set on leaving

    def __enter__(self) -> CpuMeter:
        self.ticks = {proc.name: tree_ticks(proc.process.pid) for proc in self.stack.procs}
        self.wrk_seconds = children_cpu_seconds()
        self.machine = machine_ticks()
        self.started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        elapsed = time.monotonic() - self.started
        per_tick = 100.0 / os.sysconf("SC_CLK_TCK") / elapsed
        busy, steal = machine_ticks()
        wrk_seconds = children_cpu_seconds() - self.wrk_seconds
        self.percent = {
            proc.name: per_tick * (tree_ticks(proc.process.pid) - self.ticks[proc.name])
            for proc in self.stack.procs
        }
        self.percent[self.reaped] = 100.0 * wrk_seconds / elapsed
        machine = per_tick * (busy - self.machine[0])
        self.percent["others"] = max(0.0, machine - sum(self.percent.values()))
        self.percent["machine"] = machine
        self.percent["steal"] = per_tick * (steal - self.machine[1])


def describe_cpu(cpu: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.0f}" for name, value in cpu.items())


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """A temporary directory for the stacks' sockets, configurations and logs, removed on
    leaving; bench/results/ made if missing."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="rip-compare-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- results --------------------------------------------------------------------------------------

def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What `measure` returns, or {"error": why} if it failed: the other parts still run."""
    try:
        return measure()
    except (RuntimeError, ValueError) as error:
        print(f"\n{what} failed: {error}", flush=True)
        return {"error": str(error)}


def failed_checks(part: str, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**check, "part": part, "value": None, "met": False} for check in checks]


def print_checks(checks: list[dict[str, Any]], show: Callable[[dict[str, Any]], str]) -> None:
    for check in checks:
        shown = "failed" if check["value"] is None else show(check)
        print(f"{check['target']:<34} {shown:>8}  {'met' if check['met'] else 'NOT met'}")


def write_results(new: dict[str, Any], targets: list[dict[str, Any]], parts: set[str]) -> None:
    """Replace what this run measured in bench/results/compare.json and keep the rest: the
    entries of parts not run this time, and their targets."""
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    if not isinstance(results, dict):
        results = {}
    kept = [check for check in results.get("targets", [])
            if check.get("part", "comparison") not in parts]
    results |= new
    results["targets"] = [*kept, *targets]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")


# -- set-up and facts -----------------------------------------------------------------------------

def find_tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def ensure_apt_tools(names: Sequence[str]) -> None:
    """Install with apt (scripts/apt-ensure) the commands of `names` that are missing (each is
    both the command and its Debian package)."""
    missing = [name for name in names if not find_tool(name)]
    if not missing:
        return
    print(f"missing {', '.join(missing)}: installing with scripts/apt-ensure (apt-get). Debian's "
          "packages may enable their own system services; this script never uses them.",
          flush=True)
    if subprocess.run([str(ROOT / "scripts" / "apt-ensure"), *missing]).returncode != 0:
        sys.exit(f"could not install {' '.join(missing)}: install them and try again")


def ensure_pip_tools(names: Sequence[str]) -> None:
    """Install into .venv with pip the packages of `names` that are missing."""
    missing = [name for name in names if package_version(name) is None]
    if not missing:
        return
    print(f"missing {', '.join(missing)}: installing into .venv with pip", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-q", *missing]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"could not pip install {' '.join(missing)}")


def cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^(?:model name|Hardware|Model)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match[1].strip() if match else platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def command_output(command: list[str]) -> str:
    """The first line a command prints (stdout or stderr), or "" if it cannot run."""
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip().split("\n", 1)[0]


def ensure_tools(apt: Sequence[str], pip: Sequence[str] = ()) -> dict[str, str]:
    """The paths of the commands of `apt` (installed with apt when missing) and of `pip`
    (installed into .venv), by name."""
    ensure_apt_tools(apt)
    ensure_pip_tools(pip)
    tools = {name: find_tool(name) or "" for name in apt}
    if not all(tools.values()):
        sys.exit(f"still missing after installing: {tools}")
    return tools | {name: str(VENV_BIN / name) for name in pip}


def machine_facts(tools: dict[str, str], packages: Sequence[str]) -> dict[str, Any]:
    """The machine, the versions of `packages` and of the commands of `tools` run with -v
    (those installed with apt), the commit and the date."""
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in packages},
        **{name: command_output([path, "-v"]) for name, path in tools.items()
           if not path.startswith(str(VENV_BIN))},
        "git_commit": command_output(["git", "rev-parse", "HEAD"]) + ("+dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_main(main: Callable[[], int], script: str) -> None:
    """Run a benchmark's main(): SIGTERM stops it as Ctrl-C does (the finally clauses stop
    the servers it started); its exit code, or 130 when interrupted, 1 with a message on a
    failure."""
    signal.signal(signal.SIGTERM, interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, ValueError) as error:
        sys.exit(f"bench/{script}: {error}")


# -- the command line ------------------------------------------------------------------------------
def load_parser(description: str, *, rounds: int = 3) -> argparse.ArgumentParser:
    """A parser with the options of every wrk-driven benchmark here."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, help="seconds per wrk run (5; --quick: 3)")
    parser.add_argument("--rounds", type=int,
                        help=f"rounds ({rounds}; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unrecorded wrk seconds before each run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk -c (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 3 s and 100,000 requests for the memory check")
    parser.add_argument("--profile-duration", type=int, default=10,
                        help="seconds of each py-spy recording (default: %(default)s)")
    return parser


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace, *,
                  rounds: int = 3, comparison: bool = False, rolling: bool = False,
                  cold_start: bool = False, profile: bool = False) -> Settings:
    """The run's settings from `load_parser`'s options; which parts run is the caller's."""
    settings = Settings(
        duration=args.duration or (3 if args.quick else 5),
        rounds=args.rounds or (1 if args.quick else rounds),
        warmup=args.warmup, threads=args.threads, connections=args.connections,
        memory_requests=100_000 if args.quick else 1_000_000,
        profile=profile, profile_seconds=args.profile_duration, comparison=comparison,
        rolling=rolling, cold_start=cold_start,
    )
    if min(settings.duration, settings.rounds, settings.threads, settings.profile_seconds) < 1:
        parser.error("--duration, --rounds, --threads and --profile-duration must be >= 1")
    if settings.warmup < 0 or settings.connections < settings.threads:
        parser.error("--warmup must be >= 0 and --connections >= --threads")
    return settings
