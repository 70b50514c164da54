"""py-spy on the rip balancer under load: where its time goes.

    .venv/bin/python bench/profile_balancer.py [--profile-duration 10]

One rip stack (stacks.RIP) under wrk; py-spy records the balancer for --profile-duration seconds
as a flame graph (bench/results/balancer-profile.svg), then as raw stacks with native frames,
summed up in bench/results/balancer-profile.txt (the share of samples waiting in epoll, in
write() and read(), the top functions by own and total samples). Alone it writes "profile" into
bench/results/compare.json.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    ROOT,
    CpuMeter,
    Settings,
    describe_cpu,
    ensure_tools,
    load_parser,
    parse_wrk,
    run_main,
    settings_from,
    work_directory,
    write_results,
    wrk_command,
)
from stacks import RIP, launched

PROFILE_SVG = RESULTS_DIR / "balancer-profile.svg"
PROFILE_TXT = RESULTS_DIR / "balancer-profile.txt"
PROFILE_RATE = 200
PROFILE_TOP = 15
LEAF_KINDS = {  # native leaf frames (py-spy --native) by what the balancer is doing
    "waiting (epoll)": re.compile(r"epoll_p?wait "),
    "write()": re.compile(r"(__)?(write|writev|send|sendmsg) "),
    "read()": re.compile(r"(__)?(read|readv|recv|recvfrom|recvmsg) "),
}


def py_spy(tools: dict[str, str], pid: int, seconds: int, fmt: str, output: Path,
           *, native: bool = False) -> tuple[bool, str]:
    """Run `py-spy record`; whether it succeeded, and what it said."""
    command = [
        tools["py-spy"], "record", "--pid", str(pid), "--duration", str(seconds),
        "--rate", str(PROFILE_RATE), "--format", fmt, "-o", str(output),
        *(["--native"] if native else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                            check=False)
    said = f"$ {' '.join(command[1:])}\n{result.stdout}{result.stderr}".strip()
    return result.returncode == 0, said


def record_raw(tools: dict[str, str], pid: int, seconds: int, raw: Path) -> tuple[bool, str]:
    """Raw stacks with native (C) frames, which show the system calls; without if py-spy can't."""
    ok, said = py_spy(tools, pid, seconds, "raw", raw, native=True)
    if ok:
        return True, said
    ok, again = py_spy(tools, pid, seconds, "raw", raw)
    if not ok:
        raise RuntimeError(f"py-spy failed:\n{said}\n{again}")
    return False, f"{said}\n{again}"


def profile(settings: Settings, tools: dict[str, str], workdir: Path) -> dict[str, Any]:
    """py-spy on the balancer of a rip stack under load: a flame graph, then raw stacks."""
    seconds = settings.profile_seconds
    directory = workdir / "profile"
    directory.mkdir()
    raw = directory / "balancer.raw"
    print(f"\nprofile: py-spy on the balancer under wrk, {seconds} s for the flame graph, then "
          f"{seconds} s of raw stacks", flush=True)
    with launched(RIP, directory, tools) as stack:
        pid = stack.pid("balancer")
        url = f"http://127.0.0.1:{stack.port}{RIP.path}"
        load = subprocess.Popen(
            wrk_command(settings, url, 2 * seconds + 4), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        try:
            time.sleep(1.0)
            ok, said = py_spy(tools, pid, seconds, "flamegraph", PROFILE_SVG)
            if not ok:
                raise RuntimeError(f"py-spy failed:\n{said}")
            with CpuMeter(stack, reaped="py-spy") as meter:  # wrk still runs: in "others"
                native, more = record_raw(tools, pid, seconds, raw)
            wrk_text, _ = load.communicate(timeout=2 * seconds + 30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        stack.check_alive()
    run = parse_wrk(wrk_text, RIP.name, 0)
    header = [
        f"py-spy record --rate {PROFILE_RATE} --duration {seconds}"
        f"{' --native' if native else ''} on the rip balancer (access log on) under "
        f"wrk -t{settings.threads} -c{settings.connections} GET /ping: "
        f"{run.requests_per_s:.0f} req/s while profiled, errors "
        f"{run.non_2xx_3xx + run.socket_errors}",
        f"CPU during the recording (/proc, % of one core): {describe_cpu(meter.percent)}",
    ]
    text, top = summarize_profile(raw.read_text(), header, f"{said}\n{more}")
    PROFILE_TXT.write_text(text)
    return {"svg": str(PROFILE_SVG.relative_to(ROOT)), "text": str(PROFILE_TXT.relative_to(ROOT)),
            "native": native, "requests_per_s_while_profiled": run.requests_per_s,
            "cpu_percent": {name: round(value, 1) for name, value in meter.percent.items()},
            "errors": run.non_2xx_3xx + run.socket_errors, "top_own": top}


def function_of(frame: str) -> str:
    """`name (path:line)` without the line, so that a function's lines add up."""
    return re.sub(r":\d+\)$", ")", frame)


def count_stacks(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Samples per function as the leaf (own) and anywhere in the stack (total); all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(frame) for frame in stack.split(";")]
        samples += count
        own[functions[-1]] += count
        for function in set(functions):
            total[function] += count
    return own, total, samples


def leaf_kinds(own: Counter[str]) -> str:
    """The leaf samples by kind: the system calls that matter here, and everything else."""
    kinds: Counter[str] = Counter()
    for name, count in own.items():
        kind = next((kind for kind, leaf in LEAF_KINDS.items() if leaf.match(name)), "other")
        kinds[kind] += count
    samples = max(sum(kinds.values()), 1)
    return ", ".join(f"{kind} {100 * count / samples:.1f} %" for kind, count in kinds.most_common())


def summarize_profile(raw: str, header: list[str],
                      said: str) -> tuple[str, list[dict[str, Any]]]:
    """Top functions by own (leaf) samples and by total samples, from py-spy's raw stacks."""
    own, total, samples = count_stacks(raw)
    # Python functions only; those in (nearly) every sample (runpy, main, Runner.run) say nothing.
    python = Counter({name: count for name, count in total.items()
                      if name.endswith(".py)") and count < 0.98 * samples})
    lines = [
        *header,
        f"{samples} samples; leaf frames by kind: {leaf_kinds(own)}",
        "",
        *table_of(f"top {PROFILE_TOP} functions by own samples (leaf frames)", own, total,
                  samples),
        "",
        *table_of(f"top {PROFILE_TOP} Python functions by total samples (own + callees)", python,
                  own, samples, total_first=True),
        "",
        "py-spy said:",
        said,
    ]
    top = [{"function": name, "own_percent": round(100 * count / samples, 1),
            "total_percent": round(100 * total[name] / samples, 1)}
           for name, count in own.most_common(PROFILE_TOP)] if samples else []
    return "\n".join(lines) + "\n", top


def table_of(title: str, ranked: Counter[str], other: Counter[str], samples: int,
             *, total_first: bool = False) -> list[str]:
    if not samples:
        return [title, "  (no samples)"]
    heads = ("total%", "own%") if total_first else ("own%", "total%")
    lines = [title, f"  {heads[0]:>6} {heads[1]:>6}  function (file)"]
    for name, count in ranked.most_common(PROFILE_TOP):
        lines.append(f"  {100 * count / samples:>6.1f} {100 * other[name] / samples:>6.1f}  {name}")
    return lines


def main() -> int:
    parser = load_parser(__doc__.split("\n", 1)[0])
    settings = settings_from(parser, parser.parse_args(), profile=True)
    tools = ensure_tools(("wrk",), ("py-spy",))
    with work_directory() as workdir:
        profiled = profile(settings, tools, workdir)
    print(f"profile: {profiled['svg']} and {profiled['text']}")
    write_results({"profile": profiled}, [], set())
    return 1 if profiled["errors"] else 0


if __name__ == "__main__":
    run_main(main, "profile_balancer.py")
