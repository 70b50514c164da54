"""Requests/s, latency and CPU of every configuration (stacks.py), in rounds, as medians and
ratios against the targets.

    .venv/bin/python bench/throughput.py [--duration 5] [--rounds 3] [--quick]

Every run is `wrk -t2 -c50 --latency` for --duration seconds after --warmup seconds that are
not recorded, on a fresh stack. The machine is small and noisy, so the configurations alternate
within each round (the order rotates by one every round) and the figures compared are medians
over the rounds. Alone it writes its part ("comparison", without the memory check) into
bench/results/compare.json; bench/compare.py runs it with the other parts.
"""

from __future__ import annotations

import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    CpuMeter,
    Settings,
    describe_cpu,
    ensure_tools,
    load_parser,
    machine_facts,
    parse_wrk,
    run_main,
    run_wrk,
    settings_from,
    work_directory,
    write_results,
)
from stacks import CONFIGS, Config, launched

APT_TOOLS = ("wrk", "nginx", "haproxy")  # each is both the command and its Debian package
PIP_TOOLS = ("gunicorn",)
PACKAGES = ("rip-server", "gunicorn", "uvicorn", "aiohttp", "httptools", "uvloop")
QUIET_OTHERS = 25.0  # % of a core used by "others" (see CpuMeter) above which we say so


@dataclass
class Measured:
    """One measured wrk run against one configuration."""

    config: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    cpu_percent: dict[str, float]  # see CpuMeter
    access_log_lines: int | None  # written by the whole run: readiness, warm-up and measure

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors


@dataclass(frozen=True)
class Target:
    label: str
    numerator: str
    denominator: str | None  # None: `minimum` is in requests/s
    minimum: float


# Each headline compares the same app on both sides (issue 24): a user replacing nginx +
# gunicorn keeps their WSGI app (rip-wsgi), one replacing nginx + uvicorn their ASGI app (rip).
TARGETS = (
    Target("rip (WSGI) >= 3x nginx -> gunicorn", "rip-wsgi", "nginx-gunicorn", 3.0),
    Target("rip (ASGI) >= 1.0x nginx -> uvicorn", "rip", "nginx-uvicorn", 1.0),
    Target("rip (ASGI) >= 3x haproxy -> uvicorn", "rip", "haproxy-uvicorn", 3.0),
    Target("rip >= 12,000 requests/s", "rip", None, 12_000.0),
    Target("rip /server >= 0.4x nginx static", "rip-server", "nginx-static", 0.4),
    Target("rip HTTPS >= 2x nginx HTTPS -> gunicorn (keep-alive)", "rip-https",
           "nginx-https-gunicorn", 2.0),
)


INFO_RATIOS = (("rip-nolog", "rip"),  # without / with the access log
               ("rip", "rip-nice0"),  # the balancer above / at the workers' priority
               ("rip-wsgi", "rip"),  # the WSGI path against the ASGI path, same response
               # HAProxy in front of rip's WSGI workers: how far a balancer in C gets with
               # them, and rip's balancer against it
               ("haproxy-rip", "nginx-gunicorn"),
               ("haproxy-https-rip", "nginx-https-gunicorn"),
               ("rip-wsgi", "haproxy-rip"),
               ("rip-https", "haproxy-https-rip"),
               # a balancer in Python that does no HTTP work, in front of rip's workers
               ("floor-rip", "nginx-gunicorn"),
               ("floor-https-rip", "nginx-https-gunicorn"),
               ("rip-https-close", "nginx-https-gunicorn-close"))  # a handshake per request


def count_lines(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    except OSError:
        return 0


def measure(config: Config, round_: int, settings: Settings, tools: dict[str, str],
            workdir: Path) -> Measured:
    """Start a fresh stack, warm it up, measure it with wrk and stop it, whatever happens."""
    directory = workdir / f"{round_}-{config.name}"
    directory.mkdir()
    try:
        with launched(config, directory, tools) as stack:
            url = config.url(stack.port)
            if settings.warmup > 0:
                run_wrk(settings, url, settings.warmup, config.close)
            with CpuMeter(stack) as meter:
                text = run_wrk(settings, url, settings.duration, config.close)
            stack.check_alive()
        run = parse_wrk(text, config.name, round_)
        # Counted once stopped: the balancer buffers its access log and flushes it on exit.
        log_lines = count_lines(stack.access_log)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Measured(
        config=config.name, round=round_, requests_per_s=run.requests_per_s,
        p50_ms=run.p50_ms, p99_ms=run.p99_ms, requests=run.requests,
        non_2xx_3xx=run.non_2xx_3xx, socket_errors=run.socket_errors,
        cpu_percent={name: round(value, 1) for name, value in meter.percent.items()},
        access_log_lines=log_lines,
    )


def run_rounds(settings: Settings, tools: dict[str, str], workdir: Path) -> list[Measured]:
    runs: list[Measured] = []
    for round_ in range(1, settings.rounds + 1):
        shift = (round_ - 1) % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            run = measure(config, round_, settings, tools, workdir)
            print(
                f"  round {round_} {config.name:<16} {run.requests_per_s:>8.0f} req/s  "
                f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  errors {run.errors}  "
                f"cpu% {describe_cpu(run.cpu_percent)}",
                flush=True,
            )
            runs.append(run)
    return runs


def summarize(runs: list[Measured]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians of requests/s, p50, p99 and CPU, and the total of errors."""
    summary: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        mine = [run for run in runs if run.config == config.name]
        names = mine[0].cpu_percent.keys()
        summary[config.name] = {
            "requests_per_s": statistics.median(run.requests_per_s for run in mine),
            "p50_ms": statistics.median(run.p50_ms for run in mine),
            "p99_ms": statistics.median(run.p99_ms for run in mine),
            "errors": sum(run.errors for run in mine),
            "cpu_percent": {
                name: statistics.median(run.cpu_percent[name] for run in mine) for name in names
            },
        }
    return summary


def ratios(summary: dict[str, dict[str, Any]], top: str, bottom: str) -> dict[str, float]:
    return {
        key: summary[top][key] / summary[bottom][key]
        for key in ("requests_per_s", "p50_ms", "p99_ms")
    }


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for target in TARGETS:
        value = summary[target.numerator]["requests_per_s"]
        check: dict[str, Any] = {"target": target.label, "minimum": target.minimum}
        if target.denominator:
            check |= {f"{key}_ratio": round(ratio, 4) for key, ratio in
                      ratios(summary, target.numerator, target.denominator).items()}
            value /= summary[target.denominator]["requests_per_s"]
        check |= {"value": round(value, 4), "met": value >= target.minimum}
        checks.append(check)
    return checks


def print_summary(summary: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"\n{'median of rounds':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
          "cpu% (per process, wrk)")
    for name, figures in summary.items():
        print(
            f"{name:<16} {figures['requests_per_s']:>8.0f} {figures['p50_ms']:>8.2f} "
            f"{figures['p99_ms']:>8.2f} {figures['errors']:>6}  "
            f"{describe_cpu(figures['cpu_percent'])}"
        )
    busiest = max(figures["cpu_percent"]["others"] for figures in summary.values())
    if busiest > QUIET_OTHERS:
        print(f"note: up to {busiest:.0f} % of a core (median of a configuration) went to other "
              "work than the servers and wrk while measuring: the machine was not quiet")
    print(f"\n{'ratio of medians':<34} {'req/s':>7} {'p50':>7} {'p99':>7}  target")
    for check in checks:
        verdict = "met" if check["met"] else "NOT met"
        if "requests_per_s_ratio" in check:
            print(f"{check['target']:<34} {check['requests_per_s_ratio']:>6.2f}x "
                  f"{check['p50_ms_ratio']:>6.2f}x {check['p99_ms_ratio']:>6.2f}x  {verdict}")
        else:
            print(f"{check['target']:<34} {check['value']:>7.0f} {'':>7} {'':>7}  {verdict}")
    for top, bottom in INFO_RATIOS:
        figures = ratios(summary, top, bottom)
        print(f"{top + ' / ' + bottom:<34} {figures['requests_per_s']:>6.2f}x "
              f"{figures['p50_ms']:>6.2f}x {figures['p99_ms']:>6.2f}x  (information)")


def results(settings: Settings, facts: dict[str, Any], runs: list[Measured],
            summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison's entries of compare.json (the memory checks and the profile are added
    by compare.py)."""
    return {
        "machine": facts,
        "settings": asdict(settings) | {
            "load": f"wrk -t{settings.threads} -c{settings.connections} --latency",
            "configs": {config.name: f"{config.description}; GET {config.path}"
                        for config in CONFIGS},
        },
        "runs": [asdict(run) for run in runs],
        "medians": summary,
        "rip_errors": sum(run.errors for run in runs if run.config.startswith("rip")),
    }


def main() -> int:
    parser = load_parser(__doc__.split("\n", 1)[0])
    settings = settings_from(parser, parser.parse_args(), comparison=True)
    tools = ensure_tools(APT_TOOLS, PIP_TOOLS)
    facts = machine_facts(tools, PACKAGES)
    with work_directory() as workdir:
        runs = run_rounds(settings, tools, workdir)
    summary = summarize(runs)
    checks = check_targets(summary)
    print_summary(summary, checks)
    new = results(settings, facts, runs, summary)
    write_results(new, checks, {"comparison"})
    return 1 if new["rip_errors"] else 0


if __name__ == "__main__":
    run_main(main, "throughput.py")
