"""Static files and compression, served by rip's balancer, in one run.

    .venv/bin/python bench/static.py [--duration 5] [--rounds 3] [--quick] [--no-compression]

Files: a 4 KB and a 1 MB file in one directory, served by rip's balancer (a static mount, no
worker, access log to a file, at nice -5 as rip runs it) and by nginx (one worker process,
`sendfile on`, `gzip_static on`, access log to a file: bench/conf/nginx-files.conf), both
started once and loaded in turn with `wrk -t2 -c50` on each file, the order of the two
alternating every round. Reported: the median requests/s of each, rip / nginx (target >= 0.5x),
and the RSS of rip's balancer (and of nginx's processes) before the first and after the last
round: memory must stay flat.

Compression (unless --no-compression): rip (balancer + 2 workers) serving a 10 KB text/html
response (bench/text10k.py), `wrk -H "Accept-Encoding: gzip"`, with and without
`--compression`, alternating: the balancer's CPU per request in each (the difference is what
compressing costs), requests/s, and the bytes of one response each way.

Results: bench/results/static.json.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    VENV_BIN,
    CpuMeter,
    Stack,
    descendants,
    describe_cpu,
    ensure_tools,
    free_port,
    load_parser,
    machine_facts,
    over_tcp,
    parse_wrk,
    run_main,
    run_wrk,
    settings_from,
    wait_ready,
    work_directory,
    wrk_command,
)
from stacks import render, start_rip_workers

from ripsvc.balancer.options import NICE

RESULTS = RESULTS_DIR / "static.json"
FILES = {"4k": 4 << 10, "1m": 1 << 20}
TARGET = 0.5
PACKAGES = ("rip-server", "httptools", "uvloop", "brotli")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_kb(pid: int) -> int:
    return sum(rss_kb(p) for p in (pid, *descendants(pid)))


def start_rip(stack: Stack, root: Path | None, workers: list[Path] | None = None,
              extra: tuple[str, ...] = ()) -> None:
    """rip's balancer with `root` mounted at /static/ (none: no mount), these workers and
    these more arguments."""
    stack.port = free_port()
    command = [str(VENV_BIN / "python"), "-m", "ripsvc.balancer", "--app", "static",
               "--listen", f"tcp:127.0.0.1:{stack.port}", "--control",
               str(stack.dir / "ctl.sock"), *extra]
    if root is not None:
        command += ["--static", json.dumps({"/static/": str(root)})]
    for n, path in enumerate(workers or [], 1):
        command += ["--worker", f"{n}={path}"]
    if NICE and os.geteuid() != 0:
        command += ["--nice", "0"]  # without the privilege: at the workers' priority
    stack.access_log = stack.dir / "access.log"
    proc = stack.start("balancer", command, stdout=stack.access_log)
    wait_ready(proc, over_tcp(stack.port), "/server")


def start_nginx(stack: Stack, root: Path) -> None:
    stack.port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    values: dict[str, str | int] = {"dir": str(stack.dir), "port": stack.port, "root": str(root)}
    conf = stack.dir / "nginx.conf"
    conf.write_text(render("nginx.conf", user=user, site=render("nginx-files.conf", **values),
                           **values))
    proc = stack.start("nginx", [stack.tools["nginx"], "-p", str(stack.dir), "-c", str(conf),
                                 "-e", str(stack.dir / "nginx-error.log")])
    wait_ready(proc, over_tcp(stack.port), "/static/4k.bin")


@contextlib.contextmanager
def stacks(workdir: Path, tools: dict[str, str], root: Path) -> Iterator[dict[str, Stack]]:
    started: dict[str, Stack] = {}
    try:
        for name, start in (("rip", start_rip), ("nginx", start_nginx)):
            directory = workdir / name
            directory.mkdir()
            started[name] = Stack(name, directory, tools)
            start(started[name], root)
        yield started
    finally:
        for stack in started.values():
            stack.stop()


def measure_files(settings: Any, workdir: Path, tools: dict[str, str]) -> dict[str, Any]:
    root = workdir / "www"
    root.mkdir()
    for name, size in FILES.items():
        (root / f"{name}.bin").write_bytes(os.urandom(size))
    runs: list[dict[str, Any]] = []
    with stacks(workdir, tools, root) as started:
        rip_pid = started["rip"].pid("balancer")
        nginx_pid = started["nginx"].pid("nginx")
        rss_before = {"rip": rss_kb(rip_pid), "nginx": tree_rss_kb(nginx_pid)}
        order = ["rip", "nginx"]
        for round_ in range(1, settings.rounds + 1):
            for file in FILES:
                for server in order:
                    stack = started[server]
                    url = f"http://127.0.0.1:{stack.port}/static/{file}.bin"
                    if settings.warmup:
                        run_wrk(settings, url, settings.warmup)
                    with CpuMeter(stack) as cpu:
                        out = run_wrk(settings, url, settings.duration)
                    run = parse_wrk(out, server, round_)
                    runs.append({"server": server, "file": file, "round": round_,
                                 "requests_per_s": run.requests_per_s, "p99_ms": run.p99_ms,
                                 "errors": run.non_2xx_3xx + run.socket_errors,
                                 "cpu_percent": cpu.percent})
                    print(f"round {round_} {file:>3} {server:<6} {run.requests_per_s:>10,.0f} "
                          f"req/s  p99 {run.p99_ms:6.2f} ms  errors "
                          f"{run.non_2xx_3xx + run.socket_errors}  cpu: "
                          f"{describe_cpu(cpu.percent)}", flush=True)
            order.reverse()
        rss_after = {"rip": rss_kb(rip_pid), "nginx": tree_rss_kb(nginx_pid)}
    medians = {f"{server}-{file}": statistics.median(
        r["requests_per_s"] for r in runs if r["server"] == server and r["file"] == file)
        for server in ("rip", "nginx") for file in FILES}
    ratios = {file: medians[f"rip-{file}"] / medians[f"nginx-{file}"] for file in FILES}
    print()
    for file in FILES:
        print(f"{file:>3}: rip {medians[f'rip-{file}']:,.0f} req/s, nginx "
              f"{medians[f'nginx-{file}']:,.0f} req/s: rip/nginx {ratios[file]:.2f}x "
              f"(target >= {TARGET}x: {'met' if ratios[file] >= TARGET else 'NOT met'})")
    print(f"RSS: rip's balancer {rss_before['rip'] / 1024:.1f} -> {rss_after['rip'] / 1024:.1f}"
          f" MB, nginx {rss_before['nginx'] / 1024:.1f} -> {rss_after['nginx'] / 1024:.1f} MB")
    return {"runs": runs, "medians": medians, "ratios": ratios, "rss_kb_before": rss_before,
            "rss_kb_after": rss_after, "errors": sum(r["errors"] for r in runs),
            "targets": {f"rip >= {TARGET}x nginx, {file}": ratios[file] >= TARGET
                        for file in FILES}}


def response_size(port: int, gzip: bool) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Accept-Encoding": "gzip"} if gzip else {})
        return len(conn.getresponse().read())
    finally:
        conn.close()


def measure_compression(settings: Any, workdir: Path, tools: dict[str, str]) -> dict[str, Any]:
    """The balancer's CPU per request for a 10 KB text response, compressed or not."""
    runs: list[dict[str, Any]] = []
    started: dict[str, Stack] = {}
    try:
        for name, extra in (("plain", ()), ("gzip", ("--compression",))):
            directory = workdir / f"compress-{name}"
            directory.mkdir()
            stack = started[name] = Stack(name, directory, tools)
            sockets = start_rip_workers(stack, "bench/text10k.py")
            start_rip(stack, None, sockets, extra)
        sizes = {name: response_size(started[name].port, True) for name in started}
        order = ["plain", "gzip"]
        for round_ in range(1, settings.rounds + 1):
            for name in order:
                stack = started[name]
                url = f"http://127.0.0.1:{stack.port}/"
                command = [*wrk_command(settings, url, settings.duration)[:-1], "-H",
                           "Accept-Encoding: gzip", url]
                if settings.warmup:
                    warm = [*command]
                    warm[3] = f"-d{settings.warmup}s"
                    subprocess.run(warm, capture_output=True, check=False)
                with CpuMeter(stack) as cpu:
                    result = subprocess.run(command, capture_output=True, text=True,
                                            check=True, timeout=settings.duration + 30)
                run = parse_wrk(result.stdout, name, round_)
                seconds = settings.duration
                balancer_us = cpu.percent["balancer"] / 100 * seconds / run.requests * 1e6
                runs.append({"config": name, "round": round_,
                             "requests_per_s": run.requests_per_s,
                             "balancer_cpu_us_per_request": balancer_us,
                             "errors": run.non_2xx_3xx + run.socket_errors,
                             "cpu_percent": cpu.percent})
                print(f"round {round_} {name:<5} {run.requests_per_s:>8,.0f} req/s  balancer "
                      f"{balancer_us:6.1f} us/request  cpu: {describe_cpu(cpu.percent)}",
                      flush=True)
            order.reverse()
    finally:
        for stack in started.values():
            stack.stop()
    cpu_us = {name: statistics.median(r["balancer_cpu_us_per_request"] for r in runs
                                      if r["config"] == name) for name in started}
    rates = {name: statistics.median(r["requests_per_s"] for r in runs if r["config"] == name)
             for name in started}
    extra_us = cpu_us["gzip"] - cpu_us["plain"]
    print(f"\n10 KB text/html: {sizes['plain']:,} -> {sizes['gzip']:,} bytes "
          f"({1 - sizes['gzip'] / sizes['plain']:.0%} saved); the balancer's CPU per request "
          f"{cpu_us['plain']:.1f} -> {cpu_us['gzip']:.1f} us (+{extra_us:.1f} us); "
          f"{rates['plain']:,.0f} -> {rates['gzip']:,.0f} req/s")
    return {"runs": runs, "bytes": sizes, "balancer_cpu_us_per_request": cpu_us,
            "requests_per_s": rates, "errors": sum(r["errors"] for r in runs)}


def main() -> int:
    parser = load_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--no-compression", action="store_true",
                        help="only the files, not the compression figure")
    args = parser.parse_args()
    settings = settings_from(parser, args)
    tools = ensure_tools(("wrk", "nginx"))
    results: dict[str, Any] = {"machine": machine_facts(tools, PACKAGES)}
    print(f"static files: {settings.rounds} rounds, wrk -t{settings.threads} "
          f"-c{settings.connections} -d{settings.duration}s (+{settings.warmup}s warm-up)",
          flush=True)
    with work_directory() as workdir:
        results["files"] = measure_files(settings, workdir, tools)
        if not args.no_compression:
            print("\ncompression: a 10 KB text/html response", flush=True)
            results["compression"] = measure_compression(settings, workdir, tools)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(RESULTS_DIR.parent.parent)}")
    errors = results["files"]["errors"] + results.get("compression", {}).get("errors", 0)
    return 1 if errors else 0


if __name__ == "__main__":
    run_main(main, "static.py")
