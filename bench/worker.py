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
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    RESULTS_DIR,
    ROOT,
    Run,
    Stack,
    ensure_tools,
    free_port,
    machine_facts,
    over_tcp,
    parse_wrk,
    run_main,
    run_wrk,
    wait_ready,
    work_directory,
)

RESULTS = RESULTS_DIR / "worker.json"
TARGET = 0.8  # rip's median requests/s must be at least this share of uvicorn's
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


@dataclass(frozen=True)
class OneConnection:
    """wrk's load here: one connection, as the worker serves one request at a time."""

    threads: int = 1
    connections: int = 1


def measure(name: str, round_: int, duration: int, warmup: int, workdir: Path) -> Run:
    """Start a fresh server, warm it up, measure it with wrk and stop it, whatever happens."""
    directory = workdir / f"{round_}-{name}"
    directory.mkdir()
    stack = Stack(name, directory, {})
    stack.port = free_port()
    url = f"http://127.0.0.1:{stack.port}/ping"
    try:
        server = stack.start(name, [".venv/bin/python", "bench/activate.py",
                                    f"127.0.0.1:{stack.port}", "--", *SERVERS[name]])
        wait_ready(server, over_tcp(stack.port), "/ping")
        if warmup > 0:
            run_wrk(OneConnection(), url, warmup)
        run = parse_wrk(run_wrk(OneConnection(), url, duration), name, round_)
        stack.check_alive()
        return run
    finally:
        stack.stop()


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
    tools = ensure_tools(("wrk",))
    facts = machine_facts(tools, PACKAGES)
    print(
        f"{facts['nproc']} CPUs ({facts['cpu_model']}), Python {facts['python']}, "
        f"{args.rounds} rounds of {args.duration} s (+{args.warmup} s warm-up) per server"
    )
    runs: list[Run] = []
    with work_directory() as workdir:
        for round_ in range(1, args.rounds + 1):
            for name in SERVERS:
                run = measure(name, round_, args.duration, args.warmup, workdir)
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
    run_main(main, "worker.py")
