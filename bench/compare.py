"""Compare rip (balancer + 2 workers) with the stacks it replaces, all serving GET /ping: the one
command that runs every part and writes bench/results/compare.json.

    .venv/bin/python bench/compare.py [--duration 5] [--rounds 3] [--quick] [--profile]
                                      [--no-rolling] [--no-cold-start]
    .venv/bin/python bench/compare.py --only [--rolling] [--cold-start] [--profile]

The parts, each also a script of its own (same options) that merges its figures into
compare.json:

    throughput.py        every configuration of stacks.py (rip, nginx -> gunicorn, HAProxy ->
                         uvicorn, nginx -> uvicorn, HTTPS, the floor …): wrk rounds, medians,
                         ratios against the targets
    memory.py            the balancer's RSS over 1,000,000 requests (100,000 with --quick), and
                         over 50,000 (5,000) HTTPS requests of a connection each (information)
    rolling.py           requests/s and errors during rolling restarts of rip-server
    coldstart.py         the time from launching rip-server to its first 200
    profile_balancer.py  py-spy on the balancer under load (--profile)

A default run does the throughput rounds, the memory checks, rolling restarts and cold starts
(--no-rolling, --no-cold-start skip those two); --only runs just what --rolling, --cold-start and
--profile ask for and merges it into compare.json, keeping the figures of the parts not run.

Installs what is missing (wrk, nginx and haproxy with apt-get as root; gunicorn and py-spy
with pip into .venv), prints a table, the ratios against their targets and writes
bench/results/compare.json. Exits 0 whether or not the targets are met, 1 if any rip run saw
errors (non-2xx/3xx responses or socket errors) or a rolling restart failed.
"""

from __future__ import annotations

import argparse
from typing import Any

import coldstart
import memory
import profile_balancer
import rolling
import throughput
from common import (
    Settings,
    attempt,
    ensure_tools,
    load_parser,
    machine_facts,
    run_main,
    settings_from,
    work_directory,
    write_results,
)
from stacks import CONFIGS, HTTPS_CLOSE

PACKAGES = (*throughput.PACKAGES, "py-spy")


def parse_args() -> Settings:
    parser = load_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", action="store_true",
                        help="also profile the balancer under load with py-spy")
    parser.add_argument("--rolling", action=argparse.BooleanOptionalAction,
                        help="requests/s and errors during rolling restarts of rip-server "
                             "(part of a default run; --no-rolling skips it)")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction,
                        help="time from launching rip-server to its first 200 (part of a "
                             "default run; --no-cold-start skips it)")
    parser.add_argument("--only", action="store_true",
                        help="skip the configurations and the memory check: run only what "
                             "--rolling, --cold-start and --profile ask for, and merge it into "
                             "bench/results/compare.json")
    args = parser.parse_args()
    if args.only and not (args.rolling or args.cold_start or args.profile):
        parser.error("--only needs --rolling, --cold-start or --profile")
    # With --only, what is asked for; otherwise everything not switched off.
    return settings_from(
        parser, args, comparison=not args.only, profile=args.profile,
        rolling=bool(args.rolling) if args.only else args.rolling is not False,
        cold_start=bool(args.cold_start) if args.only else args.cold_start is not False)


def describe_run(settings: Settings) -> str:
    parts = []
    if settings.comparison:
        parts.append(f"{settings.rounds} rounds x {len(CONFIGS)} configurations x "
                     f"{settings.duration} s (+{settings.warmup} s warm-up), memory check")
    if settings.rolling:
        parts.append(f"rolling restarts ({settings.rounds} rounds x 2 x {settings.duration} s)")
    if settings.cold_start:
        parts.append(f"cold start ({coldstart.COLD_STARTS} starts)")
    if settings.profile:
        parts.append("profile")
    return "; ".join(parts) + f"; wrk -t{settings.threads} -c{settings.connections}"


def main() -> int:
    settings = parse_args()
    tools = ensure_tools(throughput.APT_TOOLS,
                         [*throughput.PIP_TOOLS, *(["py-spy"] if settings.profile else [])])
    facts = machine_facts(tools, PACKAGES)
    print(f"{facts['nproc']} CPUs ({facts['cpu_model']}), Python {facts['python']}; "
          f"{describe_run(settings)}", flush=True)
    runs: list[throughput.Measured] = []
    summary: dict[str, dict[str, Any]] = {}
    memory_keep: dict[str, Any] = {}
    memory_tls: dict[str, Any] = {}
    with work_directory() as workdir:
        if settings.comparison:
            runs = throughput.run_rounds(settings, tools, workdir)
            summary = throughput.summarize(runs)
            memory_keep, memory_tls = memory.both_checks(
                settings, tools, workdir, summary["rip"]["requests_per_s"],
                summary[HTTPS_CLOSE.name]["requests_per_s"])
        rolled = attempt("rolling restarts", lambda: rolling.rolling_restarts(
            settings, tools, workdir, facts)) if settings.rolling else None
        cold = attempt("cold start", lambda: coldstart.cold_starts(
            tools, workdir, facts)) if settings.cold_start else None
        profiled = profile_balancer.profile(settings, tools, workdir) \
            if settings.profile else None
    new: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    parts: set[str] = set()
    rip_errors = 0
    if settings.comparison:
        checks = throughput.check_targets(summary)
        throughput.print_summary(summary, checks)
        memory.print_memory(memory_keep)
        memory.print_memory(memory_tls)
        new = throughput.results(settings, facts, runs, summary) | {
            "memory": memory_keep, "memory_https_close": memory_tls, "profile": profiled}
        new["rip_errors"] += memory_keep["errors"] + memory_tls["errors"] + \
            (profiled["errors"] if profiled else 0)
        rip_errors = new["rip_errors"]
        targets += checks
        parts.add("comparison")
    elif profiled:
        new["profile"] = profiled
        rip_errors += profiled["errors"]
    if profiled:
        print(f"profile: {profiled['svg']} and {profiled['text']}")
    failed_parts = [part for part in (rolled, cold) if part and "error" in part]
    failed_reloads = 0
    if rolled:
        checks = rolling.rolling_targets(rolled)
        rolling.print_rolling(rolled, checks)
        new["rolling"] = rolled
        targets += checks
        parts.add("rolling")
        if "error" not in rolled:
            rip_errors += sum(sum(kinds.values()) for kinds in rolled["errors"].values())
            failed_reloads = rolled["reloads_failed"]
    if cold:
        checks = coldstart.cold_targets(cold)
        coldstart.print_cold(cold, checks)
        new["cold_start"] = cold
        targets += checks
        parts.add("cold_start")
    write_results(new, targets, parts)
    if rip_errors or failed_reloads or failed_parts:
        print(f"rip runs saw {rip_errors} errors (non-2xx/3xx or socket errors), "
              f"{failed_reloads} rolling restarts failed, {len(failed_parts)} parts failed")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, "compare.py")
