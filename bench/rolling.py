"""Requests/s and errors during rolling restarts of rip-server.

    .venv/bin/python bench/rolling.py [--duration 5] [--rounds 3] [--quick]

For each round a fresh `rip-server examples/hello w:2 http:PORT --name bench-rolling`, once
`ripctl status` shows both workers ready: wrk for --duration seconds (steady), then as long
again while `ripctl reload bench-rolling --wait` runs 3 times, evenly spaced. Medians of steady
and during requests/s and of the rounds' dips, wrk's errors. Target: dip <= 20 %, no error, no
failed reload. Alone it writes its part ("rolling") into bench/results/compare.json.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    CpuMeter,
    Proc,
    Settings,
    attempt,
    ensure_tools,
    failed_checks,
    load_parser,
    machine_facts,
    parse_wrk,
    print_checks,
    run_main,
    run_wrk,
    settings_from,
    work_directory,
    write_results,
    wrk_command,
)
from ripserver import (
    RIP_SERVER_WORKERS,
    rip_server_running,
    ripctl,
    server_lines,
    wait_workers_ready,
)

ROLLING_NAME = "bench-rolling"
ROLLING_RELOADS = 3  # `ripctl reload --wait` during each measured run, evenly spaced
RELOAD_TIMEOUT = 60.0
RELOAD_LEAD = 0.25  # seconds into the run before the first reload, while wrk connects
RECYCLE_LINE = b"recycling after"  # what a rip worker logs when it reaches a recycling limit
DIP_LIMIT = 20.0  # % fewer requests/s during rolling restarts than steady


def output_size(proc: Proc) -> int:
    try:
        return proc.output.stat().st_size
    except OSError:
        return 0


def count_between(proc: Proc, needle: bytes, offsets: list[int]) -> list[int]:
    """How many times `needle` occurs in the output between each two offsets."""
    try:
        data = proc.output.read_bytes()
    except OSError:
        return [0] * (len(offsets) - 1)
    return [data[start:end].count(needle) for start, end in itertools.pairwise(offsets)]


def wrk_figures(text: str, cpu: dict[str, float]) -> dict[str, Any]:
    run = parse_wrk(text, "rip-server", 0)
    return {
        "requests_per_s": run.requests_per_s, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
        "requests": run.requests, "non_2xx_3xx": run.non_2xx_3xx,
        "socket_errors": run.socket_errors,
        "cpu_percent": {name: round(value, 1) for name, value in cpu.items()},
    }


def load_with_reloads(settings: Settings, url: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """wrk for --duration seconds while `ripctl reload NAME --wait` runs ROLLING_RELOADS times,
    one after the other, the n-th started RELOAD_LEAD + n x duration / ROLLING_RELOADS seconds
    into the run or when the previous one is done; wrk's report and one record per reload."""
    seconds = settings.duration
    load = subprocess.Popen(
        wrk_command(settings, url, seconds), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    started = time.monotonic()
    reloads: list[dict[str, Any]] = []
    try:
        for n in range(ROLLING_RELOADS):
            time.sleep(max(0.0, started + RELOAD_LEAD + seconds * n / ROLLING_RELOADS
                           - time.monotonic()))
            at = time.monotonic() - started
            code, said = ripctl("reload", name, "--wait", timeout=RELOAD_TIMEOUT)
            reloads.append({"at_s": round(at, 2),
                            "took_s": round(time.monotonic() - started - at, 2),
                            "exit": code, "ok": code == 0, "said": said})
        text, _ = load.communicate(timeout=seconds + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        raise RuntimeError(f"wrk failed ({load.returncode}):\n{text}")
    return text, reloads


def rolling_round(settings: Settings, tools: dict[str, str], workdir: Path,
                  round_: int) -> dict[str, Any]:
    """A fresh rip-server: wrk steady, then wrk again while it restarts its workers."""
    directory = workdir / f"rolling-{round_}"
    with rip_server_running(directory, tools, ROLLING_NAME) as (stack, proc, _):
        wait_workers_ready(proc, ROLLING_NAME)
        url = f"http://127.0.0.1:{stack.port}/ping"
        if settings.warmup > 0:
            run_wrk(settings, url, settings.warmup)
        offsets = [output_size(proc)]
        with CpuMeter(stack) as steady_cpu:
            steady_text = run_wrk(settings, url, settings.duration)
        offsets.append(output_size(proc))
        with CpuMeter(stack, reaped="wrk+ripctl") as during_cpu:
            during_text, reloads = load_with_reloads(settings, url, ROLLING_NAME)
        offsets.append(output_size(proc))
        code, said = ripctl("status", ROLLING_NAME, "-j", timeout=5.0)
        stack.check_alive()
    # Read once stopped: the balancer buffers its access log (rip-server's stdout).
    log = server_lines(proc)
    recycles = count_between(proc, RECYCLE_LINE, offsets)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        status: Any = json.loads(said) if code == 0 else None
        after: Any = {"version": status["version"],
                      "workers": [[worker["id"], worker["state"]] for worker in status["workers"]]}
    except (ValueError, KeyError, TypeError):
        after = said  # what ripctl said instead
    steady = wrk_figures(steady_text, steady_cpu.percent) | {"recycles": recycles[0]}
    # The old workers exit during the run, taking their CPU time out of rip-server's tree.
    during = wrk_figures(during_text, {name: value for name, value in during_cpu.percent.items()
                                       if name in ("wrk+ripctl", "machine", "steal")}) | {
        "recycles": recycles[1],
        # The share of the run during which a reload was under way.
        "reload_coverage_percent": round(100 * sum(
            min(r["at_s"] + r["took_s"], settings.duration) - min(r["at_s"], settings.duration)
            for r in reloads) / settings.duration, 1),
    }
    record: dict[str, Any] = {
        "round": round_, "steady": steady, "during": during,
        "dip_percent": round(100 * (1 - during["requests_per_s"] / steady["requests_per_s"]), 2),
        "reloads": reloads,
        "after": after,  # `ripctl status` once the run is over
    }
    problems = (sum(not reload["ok"] for reload in reloads) + steady["non_2xx_3xx"]
                + steady["socket_errors"] + during["non_2xx_3xx"] + during["socket_errors"])
    if problems:
        record["server_log"] = log  # logs and non-2xx/3xx access lines, for the report
    return record


def rolling_restarts(settings: Settings, tools: dict[str, str], workdir: Path,
                     facts: dict[str, Any]) -> dict[str, Any]:
    """Requests/s steady and during rolling restarts, over --rounds fresh rip-servers."""
    print(f"\nrolling restarts: rip-server examples/hello w:{RIP_SERVER_WORKERS}, per round "
          f"wrk {settings.duration} s steady, then {settings.duration} s during "
          f"{ROLLING_RELOADS} x `ripctl reload {ROLLING_NAME} --wait`", flush=True)
    rounds = []
    for round_ in range(1, settings.rounds + 1):
        record = rolling_round(settings, tools, workdir, round_)
        rounds.append(record)
        steady, during = record["steady"], record["during"]
        reloads = " ".join(f"{reload['at_s']:.1f}+{reload['took_s']:.1f}s"
                           + ("" if reload["ok"] else f"(FAILED: {reload['said']})")
                           for reload in record["reloads"])
        print(f"  round {round_} steady {steady['requests_per_s']:>7.0f} req/s "
              f"p99 {steady['p99_ms']:6.2f} ms, during {during['requests_per_s']:>7.0f} req/s "
              f"p99 {during['p99_ms']:6.2f} ms, dip {record['dip_percent']:5.1f} %, errors "
              f"{error_pair(steady)} / {error_pair(during)}, recycles {steady['recycles']} / "
              f"{during['recycles']}, reloads at+took {reloads} "
              f"({during['reload_coverage_percent']:.0f} % of the run)",
              flush=True)
        if "server_log" in record:
            print("  rip-server's output (logs and non-2xx/3xx requests):\n    "
                  + "\n    ".join(record["server_log"]), flush=True)
    every = [reload for record in rounds for reload in record["reloads"]]
    return {
        "command": f"rip-server examples/hello w:{RIP_SERVER_WORKERS} http:PORT "
                   f"--name {ROLLING_NAME}",
        "load": f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s "
                "--latency GET /ping on 127.0.0.1",
        "reloads_per_run": ROLLING_RELOADS,
        "date": facts["date"], "git_commit": facts["git_commit"],
        "rounds": rounds,
        "steady_requests_per_s": statistics.median(r["steady"]["requests_per_s"] for r in rounds),
        "during_requests_per_s": statistics.median(r["during"]["requests_per_s"] for r in rounds),
        "steady_p99_ms": statistics.median(r["steady"]["p99_ms"] for r in rounds),
        "during_p99_ms": statistics.median(r["during"]["p99_ms"] for r in rounds),
        "dip_percent": statistics.median(r["dip_percent"] for r in rounds),  # of the rounds' dips
        "errors": {
            part: {kind: sum(r[part][kind] for r in rounds)
                   for kind in ("socket_errors", "non_2xx_3xx")}
            for part in ("steady", "during")
        },
        "reloads": len(every),
        "reloads_failed": sum(not reload["ok"] for reload in every),
        "reload_seconds_median": statistics.median(reload["took_s"] for reload in every),
        "reload_coverage_percent": statistics.median(
            r["during"]["reload_coverage_percent"] for r in rounds),
        "recycles": {part: sum(r[part]["recycles"] for r in rounds)
                     for part in ("steady", "during")},
    }


def error_pair(figures: dict[str, Any]) -> str:
    return f"{figures['socket_errors']}/{figures['non_2xx_3xx']}"


def rolling_targets(rolling: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in rolling:
        return failed_checks("rolling", rolling_targets(
            {"dip_percent": 0.0, "errors": {}, "reloads_failed": 0}))
    errors = sum(sum(kinds.values()) for kinds in rolling["errors"].values())
    return [
        {"part": "rolling", "target": f"rolling restart dip <= {DIP_LIMIT:g} %",
         "maximum": DIP_LIMIT, "value": rolling["dip_percent"],
         "met": rolling["dip_percent"] <= DIP_LIMIT},
        {"part": "rolling", "target": "rolling restart errors = 0", "maximum": 0,
         "value": errors, "met": errors == 0},
        {"part": "rolling", "target": "rolling restart reloads failed = 0", "maximum": 0,
         "value": rolling["reloads_failed"], "met": rolling["reloads_failed"] == 0},
    ]


def print_rolling(rolling: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    if "error" in rolling:
        print(f"\nrolling restarts failed: {rolling['error']}")
        print_checks(checks, lambda check: "")
        return
    errors = rolling["errors"]
    print(f"\nrolling restarts ({rolling['command']}; {rolling['load']}; "
          f"{rolling['reloads_per_run']} reloads per run), medians of "
          f"{len(rolling['rounds'])} rounds:\n"
          f"  steady          {rolling['steady_requests_per_s']:>8.0f} req/s  "
          f"p99 {rolling['steady_p99_ms']:6.2f} ms  socket errors/non-2xx "
          f"{error_pair(errors['steady'])}\n"
          f"  during restarts {rolling['during_requests_per_s']:>8.0f} req/s  "
          f"p99 {rolling['during_p99_ms']:6.2f} ms  socket errors/non-2xx "
          f"{error_pair(errors['during'])}\n"
          f"  reloads {rolling['reloads'] - rolling['reloads_failed']}/{rolling['reloads']} "
          f"succeeded, median {rolling['reload_seconds_median']:.2f} s each, under way "
          f"{rolling['reload_coverage_percent']:.0f} % of the run (median); workers recycled "
          f"(default policy) {rolling['recycles']['steady']} times steady, "
          f"{rolling['recycles']['during']} during, in all rounds")
    print_checks(checks, lambda check: (f"{check['value']:>6.1f} %" if "dip" in check["target"]
                                        else f"{check['value']:>8}"))


def main() -> int:
    parser = load_parser(__doc__.split("\n", 1)[0])
    settings = settings_from(parser, parser.parse_args(), rolling=True)
    tools = ensure_tools(("wrk",))
    facts = machine_facts(tools, ("rip-server",))
    with work_directory() as workdir:
        rolling = attempt("rolling restarts",
                          lambda: rolling_restarts(settings, tools, workdir, facts))
    checks = rolling_targets(rolling)
    print_rolling(rolling, checks)
    write_results({"rolling": rolling}, checks, {"rolling"})
    return 0 if all(check["met"] for check in checks[1:]) else 1  # errors, failed reloads


if __name__ == "__main__":
    run_main(main, "rolling.py")
