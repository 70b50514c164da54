"""The time from launching rip-server to its first 200.

    .venv/bin/python bench/coldstart.py

5 times: launch `rip-server examples/hello w:2 http:PORT --name bench-cold`, time the first 200
on GET /ping (polled every 10 ms), stop it (SIGINT) and wait for its exit. Target: median and
max <= 1.5 s. Alone it writes its part ("cold_start") into bench/results/compare.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    Proc,
    attempt,
    failed_checks,
    get_status,
    machine_facts,
    print_checks,
    run_main,
    work_directory,
    write_results,
)
from ripserver import RIP_SERVER_WORKERS, rip_server_running, server_lines

COLD_NAME = "bench-cold"
COLD_STARTS = 5
COLD_TIMEOUT = 20.0
COLD_POLL = 0.01
COLD_CLIENT_TIMEOUT = 0.25
COLD_LIMIT = 1.5  # seconds from launch to the first 200


def first_200(proc: Proc, port: int, launched_at: float) -> tuple[float, Counter[str]]:
    """Seconds from launch to the first 200 on GET /ping, polling every COLD_POLL seconds
    with a short-timeout client; and what the earlier attempts got."""
    seen: Counter[str] = Counter()
    while time.monotonic() - launched_at < COLD_TIMEOUT:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"rip-server {COLD_NAME} exited with status {proc.process.returncode} before "
                f"answering; its output:\n" + "\n".join(server_lines(proc))
            )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=COLD_CLIENT_TIMEOUT)
        try:
            status = get_status(connection, "/ping")
        except OSError as error:
            seen[type(error).__name__] += 1
        else:
            if status == 200:
                return time.monotonic() - launched_at, seen
            seen[f"HTTP {status}"] += 1
        time.sleep(COLD_POLL)
    raise RuntimeError(
        f"rip-server {COLD_NAME} did not answer 200 on GET /ping within {COLD_TIMEOUT:g} s "
        f"({dict(seen)}); its output:\n" + "\n".join(server_lines(proc))
    )


def cold_starts(tools: dict[str, str], workdir: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """COLD_STARTS times: launch rip-server, time the first 200, stop it and wait for its exit."""
    print(f"\ncold start: launching rip-server examples/hello w:{RIP_SERVER_WORKERS} to the "
          f"first 200 on GET /ping, {COLD_STARTS} times", flush=True)
    starts: list[dict[str, Any]] = []
    times: list[float] = []
    for n in range(1, COLD_STARTS + 1):
        with rip_server_running(workdir / f"cold-{n}", tools, COLD_NAME) as (stack, proc, at):
            seconds, before = first_200(proc, stack.port, at)
        times.append(round(seconds, 3))
        starts.append({"seconds": times[-1], "before": dict(before),
                       "exited_s_after_first_200": round(time.monotonic() - at - seconds, 2)})
        shutil.rmtree(workdir / f"cold-{n}", ignore_errors=True)
        print(f"  {n}: first 200 after {seconds:.3f} s (earlier attempts: "
              f"{', '.join(f'{count} x {kind}' for kind, count in before.items()) or 'none'})",
              flush=True)
    return {
        "command": f"rip-server examples/hello w:{RIP_SERVER_WORKERS} http:PORT "
                   f"--name {COLD_NAME}",
        "probe": f"GET /ping on 127.0.0.1 every {COLD_POLL * 1000:g} ms, "
                 f"{COLD_CLIENT_TIMEOUT:g} s client timeout",
        "date": facts["date"], "git_commit": facts["git_commit"],
        # Set: Python compiles whatever has no up-to-date .pyc at every start.
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "starts": starts,
        "median_s": round(statistics.median(times), 3),
        "max_s": max(times),
    }


def cold_targets(cold: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in cold:
        return failed_checks("cold_start", cold_targets({"median_s": 0.0, "max_s": 0.0}))
    return [
        {"part": "cold_start", "target": f"cold start {kind} <= {COLD_LIMIT:g} s",
         "maximum": COLD_LIMIT, "value": cold[f"{kind}_s"], "met": cold[f"{kind}_s"] <= COLD_LIMIT}
        for kind in ("median", "max")
    ]


def print_cold(cold: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    if "error" in cold:
        print(f"\ncold start failed: {cold['error']}")
        print_checks(checks, lambda check: "")
        return
    print(f"\ncold start ({cold['command']} to the first 200; {cold['probe']}), "
          f"{len(cold['starts'])} starts: "
          + ", ".join(f"{start['seconds']:.3f}" for start in cold["starts"]) + " s")
    print_checks(checks, lambda check: f"{check['value']:>6.3f} s")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n", 1)[0]).parse_args()
    facts = machine_facts({}, ("rip-server",))
    with work_directory() as workdir:
        cold = attempt("cold start", lambda: cold_starts({}, workdir, facts))
    checks = cold_targets(cold)
    print_cold(cold, checks)
    write_results({"cold_start": cold}, checks, {"cold_start"})
    return 1 if "error" in cold else 0


if __name__ == "__main__":
    run_main(main, "coldstart.py")
