"""Benchmark the rip worker alone against uvicorn, both serving examples/hello's /ping.

    .venv/bin/python bench/worker.py [--duration 5] [--rounds 5] [--warmup 1]

Each server gets a loopback TCP listening socket as fd 3 through bench/activate.py (systemd
socket activation), and is loaded by `wrk -t1 -c1 --latency` on one keep-alive connection.
The machine is small and noisy, so the servers alternate within each round (rip, uvicorn, rip,
uvicorn, ...) and the figures compared are medians over the rounds. Every run starts a fresh
server, lets wrk warm it up for --warmup seconds (not recorded), then measures.

Prints a table and the rip/uvicorn ratio of median requests/s against TARGET, and writes
bench/results/worker.json. Exits 0 whether or not the target is met, 1 if wrk reported errors
(non-2xx/3xx responses or socket errors: the figures are then not comparable).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "worker.json"
TARGET = 0.8  # rip's median requests/s must be at least this share of uvicorn's
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PACKAGES = ("uvicorn", "uvloop", "httptools", "aiohttp")

# Commands run in ROOT (relative paths resolve there), after bench/activate.py HOST:PORT --
SERVERS: dict[str, list[str]] = {
    "rip": [
        ".venv/bin/rip-worker", "examples/hello",
        "--log-level", "warning", "--recycle", "r:0,0s,0r",
    ],
    "uvicorn": [
        ".venv/bin/uvicorn", "--app-dir", "examples/hello", "app:app", "--fd", "3",
        "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools",
    ],
}

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class Run:
    """One measured wrk run against one server."""

    server: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int


@dataclass
class Server:
    """A server started through bench/activate.py, its output going to a temporary file."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    output: IO[bytes]

    def read_output(self) -> str:
        self.output.flush()
        self.output.seek(0)
        return self.output.read().decode(errors="replace")


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_wrk() -> str:
    """The path of wrk, installing it from apt when missing and running as root."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("wrk is not installed: run `sudo apt-get install -y wrk` and try again")
    print("wrk is missing: installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "wrk"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, check=True)
    path = shutil.which("wrk")
    if not path:
        sys.exit("wrk is still not on PATH after apt-get install")
    return path


def start_server(name: str, output: IO[bytes]) -> Server:
    """Start a server on a fresh loopback port; the caller must stop_server() it."""
    port = free_port()
    command = [
        ".venv/bin/python", "bench/activate.py", f"127.0.0.1:{port}", "--",
        *SERVERS[name],
    ]
    # A session of its own: only our stop_server() signals it, not a Ctrl-C on the terminal.
    process = subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(name, port, process, output)


def ping(port: int) -> int:
    """The status of GET /ping, on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    """Poll GET /ping until it answers 200; fail with the server's output otherwise."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.process.returncode} before it was "
                f"ready; its output:\n{server.read_output()}"
            )
        try:
            status = ping(server.port)
            if status == 200:
                return
            last_error = f"HTTP {status}"
        except OSError as error:
            last_error = repr(error)
        time.sleep(0.05)
    raise RuntimeError(
        f"{server.name} did not answer GET /ping within {timeout:g} s ({last_error}); "
        f"its output:\n{server.read_output()}"
    )


def stop_server(server: Server) -> None:
    """SIGTERM the server we started (by PID), SIGKILL it if it lingers, and reap it."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  {server.name} (pid {process.pid}) ignored SIGTERM: killing it", flush=True)
            process.kill()
            process.wait()


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


def run_wrk(wrk: str, port: int, duration: int) -> str:
    """wrk's report of one connection hammering /ping for `duration` seconds."""
    command = [
        wrk, "-t1", "-c1", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/ping",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def measure(wrk: str, name: str, round_: int, duration: int, warmup: int) -> Run:
    """Start a fresh server, warm it up, measure it with wrk and stop it, whatever happens."""
    with tempfile.TemporaryFile() as output:
        server = start_server(name, output)
        try:
            wait_ready(server)
            if warmup > 0:
                run_wrk(wrk, server.port, warmup)
            run = parse_wrk(run_wrk(wrk, server.port, duration), name, round_)
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited during the run; its output:\n{server.read_output()}"
                )
            return run
        finally:
            stop_server(server)


def summarize(runs: list[Run]) -> dict[str, dict[str, float | int]]:
    """Per server: medians of requests/s, p50 and p99, and the total of errors."""
    summary: dict[str, dict[str, float | int]] = {}
    for name in SERVERS:
        mine = [run for run in runs if run.server == name]
        summary[name] = {
            "requests_per_s": statistics.median(run.requests_per_s for run in mine),
            "p50_ms": statistics.median(run.p50_ms for run in mine),
            "p99_ms": statistics.median(run.p99_ms for run in mine),
            "errors": sum(run.non_2xx_3xx + run.socket_errors for run in mine),
        }
    return summary


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


def machine_facts(wrk: str) -> dict[str, Any]:
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "wrk": command_output([wrk, "-v"]),
        "git_commit": command_output(["git", "rev-parse", "HEAD"]) + ("+dirty" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def print_table(runs: list[Run], summary: dict[str, dict[str, float | int]]) -> None:
    print(f"\n{'server':<8} {'round':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for run in runs:
        errors = run.non_2xx_3xx + run.socket_errors
        print(
            f"{run.server:<8} {run.round:>5} {run.requests_per_s:>10.0f} "
            f"{run.p50_ms:>8.3f} {run.p99_ms:>8.3f} {errors:>6}"
        )
    print(f"\n{'median':<14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, figures in summary.items():
        print(
            f"{name:<14} {figures['requests_per_s']:>10.0f} {figures['p50_ms']:>8.3f} "
            f"{figures['p99_ms']:>8.3f} {figures['errors']:>6}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (rip, uvicorn)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unrecorded wrk seconds before each run"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration must be > 0, --rounds >= 1 and --warmup >= 0")
    return args


def main() -> int:
    args = parse_args()
    wrk = ensure_wrk()
    facts = machine_facts(wrk)
    print(
        f"{facts['nproc']} CPUs ({facts['cpu_model']}), Python {facts['python']}, "
        f"{args.rounds} rounds of {args.duration} s (+{args.warmup} s warm-up) per server"
    )
    runs: list[Run] = []
    for round_ in range(1, args.rounds + 1):
        for name in SERVERS:
            run = measure(wrk, name, round_, args.duration, args.warmup)
            print(
                f"  round {round_} {name:<8} {run.requests_per_s:>8.0f} req/s  "
                f"p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms",
                flush=True,
            )
            runs.append(run)
    summary = summarize(runs)
    ratio = summary["rip"]["requests_per_s"] / summary["uvicorn"]["requests_per_s"]
    errors = sum(int(figures["errors"]) for figures in summary.values())
    print_table(runs, summary)
    verdict = "target met" if ratio >= TARGET else "target NOT met"
    print(f"\nrip/uvicorn median req/s: {ratio:.3f} (target {TARGET}): {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": facts,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "load": "wrk -t1 -c1 --latency GET /ping",
            "servers": {name: " ".join(command) for name, command in SERVERS.items()},
        },
        "runs": [asdict(run) for run in runs],
        "medians": summary,
        "ratio": round(ratio, 4),
        "target": TARGET,
        "target_met": ratio >= TARGET,
        "errors": errors,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")
    if errors:
        print(f"wrk reported {errors} errors (non-2xx/3xx or socket): the figures are suspect")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, ValueError) as error:
        sys.exit(f"bench/worker.py: {error}")
