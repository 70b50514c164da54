"""Two builds of rip side by side: does a change make requests through rip faster?

    .venv/bin/python bench/ab.py A [B] [--pairs 10] [--duration 4] [--https]

A and B are git revisions, or `.` for the working tree (B's default). A revision is exported
with `git archive` into a temporary directory and its hot path compiled there as `make compile`
compiles the tree (setup.py build_ext --inplace); the working tree is brought up to date with
`make -s compile`. Both stacks run at once, each the `rip` configuration of bench/stacks.py
(the balancer and two workers of examples/hello; with --https `rip-https`, the WSGI
examples/hello_wsgi) with its own tree's code, and wrk loads them
in turn, A then B, then B then A, so that the VM's drift falls on both alike. It prints each
pair, then for each side the median requests/s and the CPU per request of the balancer and of
the workers (from /proc/PID/stat), and B/A.

On the project's VM two identical trees differ by up to 10 % in the medians of ten pairs
(docs/performance.md): a smaller difference says nothing. For a change to the Python of the hot
path, bench/hotpath.py --instructions is the steadier measure; this tool tells what reaches the
sockets. Exits 1 if any run saw errors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, VENV_BIN, Settings, Stack, parse_wrk, process_ticks, run_wrk
from stacks import CONFIGS, launched

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_SECONDS = 2


@dataclass
class Side:
    label: str  # what the user named: a revision or "."
    tree: Path
    requests_per_s: list[float] = field(default_factory=list)
    balancer_us: list[float] = field(default_factory=list)
    workers_us: list[float] = field(default_factory=list)


def build(revision: str, workdir: Path) -> Path:
    """The directory of a compiled tree at `revision` ("." : the working tree)."""
    if revision == ".":
        subprocess.run(["make", "-s", "compile"], cwd=ROOT, check=True)
        return ROOT
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
                            cwd=ROOT, capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"ab: {revision!r} is not a git revision of this repository")
    tree = workdir / commit.stdout.strip()[:12]
    if tree.exists():  # A and B name the same commit
        return tree
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", commit.stdout.strip()],
                             cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    print(f"compiling {revision} in {tree} ...", flush=True)
    built = subprocess.run([str(VENV_BIN / "python"), "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=tree, capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"ab: compiling {revision} failed:\n{built.stdout}{built.stderr}")
    return tree


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes rip's commands import `tree`'s ripsvc, ahead of the
    editable install's (which points at the working tree)."""
    return {"PYTHONPATH": str(tree)}


def check_imports(tree: Path) -> None:
    """Fail unless a process started as the stacks' are imports ripsvc from `tree`."""
    found = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import ripsvc.worker.http as m; print(m.__file__)"],
        cwd=tree, env={**os.environ, **tree_env(tree)}, capture_output=True, text=True,
    ).stdout.strip()
    if not found.startswith(str(tree) + "/"):
        sys.exit(f"ab: a process started in {tree} imports ripsvc from {found or 'nowhere'}")


def measure(side: Side, stack: Stack, url: str, settings: Settings) -> str:
    """One wrk run; its figures are added to `side`. Returns a problem, or ""."""
    balancer = stack.pid("balancer")
    workers = [stack.pid("w1"), stack.pid("w2")]
    before = process_ticks(balancer), sum(process_ticks(pid) for pid in workers)
    run = parse_wrk(run_wrk(settings, url, settings.duration), side.label, 0)
    after = process_ticks(balancer), sum(process_ticks(pid) for pid in workers)
    stack.check_alive()
    us_per_tick = 1e6 / CLOCK_TICKS
    side.requests_per_s.append(run.requests_per_s)
    side.balancer_us.append((after[0] - before[0]) * us_per_tick / run.requests)
    side.workers_us.append((after[1] - before[1]) * us_per_tick / run.requests)
    errors = run.non_2xx_3xx + run.socket_errors
    return f"{side.label}: {errors} errors in one run" if errors else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A", help="a git revision, or . for the working tree")
    parser.add_argument("b", metavar="B", nargs="?", default=".", help="the same (default .)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--duration", type=int, default=4, help="seconds of each wrk run")
    parser.add_argument("--https", action="store_true", help="the balancer serves HTTPS")
    args = parser.parse_args()
    if args.pairs < 1 or args.duration < 1:
        parser.error("--pairs and --duration must be at least 1")
    config = next(c for c in CONFIGS if c.name == ("rip-https" if args.https else "rip"))
    settings = Settings(duration=args.duration, rounds=args.pairs, warmup=WARMUP_SECONDS,
                        threads=2, connections=50, memory_requests=0, profile=False,
                        profile_seconds=0, comparison=False, rolling=False, cold_start=False)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rip-ab-") as scratch:
        workdir = Path(scratch)
        sides = [Side(label, build(label, workdir)) for label in (args.a, args.b)]
        for side in sides:
            check_imports(side.tree)
        (workdir / "A").mkdir()
        (workdir / "B").mkdir()
        with launched(config, workdir / "A", {}, sides[0].tree, tree_env(sides[0].tree)) as a, \
                launched(config, workdir / "B", {}, sides[1].tree, tree_env(sides[1].tree)) as b:
            running = [(sides[0], a), (sides[1], b)]
            for _, stack in running:
                run_wrk(settings, config.url(stack.port), settings.warmup)
            for pair in range(args.pairs):
                for side, stack in running if pair % 2 == 0 else running[::-1]:
                    problem = measure(side, stack, config.url(stack.port), settings)
                    if problem:
                        problems.append(problem)
                print(f"pair {pair + 1:2}: " + "  ".join(
                    f"{side.label[:10]:10} {side.requests_per_s[-1]:8,.0f}" for side in sides),
                    flush=True)
    print(f"\n{'':12} {'req/s':>8} {'balancer µs/req':>16} {'workers µs/req':>15}")
    for name, side in zip("AB", sides, strict=True):
        print(f"{name} {side.label[:10]:10} {statistics.median(side.requests_per_s):8,.0f} "
              f"{statistics.median(side.balancer_us):16.1f} "
              f"{statistics.median(side.workers_us):15.1f}")
    ratio = statistics.median(sides[1].requests_per_s) / statistics.median(sides[0].requests_per_s)
    print(f"B/A {ratio:.3f} (medians of {args.pairs} pairs; identical trees differ by up to 10 %)")
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
