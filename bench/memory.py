"""The balancer's memory under load: RSS sampled after every fifth of N requests.

    .venv/bin/python bench/memory.py [--quick]

1,000,000 requests (100,000 with --quick) through one rip stack (stacks.RIP), against the
targets (RSS <= 60 MB, no growth trend); then, for information, 50,000 (5,000) over HTTPS with a
new connection for each (rip-https-close), where what a closed connection leaves behind would
show. Alone it writes "memory" and "memory_https_close" into bench/results/compare.json;
bench/compare.py runs it after the throughput rounds.
"""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from common import (
    Settings,
    ensure_tools,
    load_parser,
    parse_wrk,
    run_main,
    run_wrk,
    settings_from,
    work_directory,
    write_results,
)
from stacks import HTTPS_CLOSE, RIP, Config, launched

#: wrk's first chunk of requests alone, before a measured rate is known (requests/s).
FIRST_RATE = 10_000.0
RSS_LIMIT_KB = 60 * 1024
RSS_GROWTH_KB = 2 * 1024  # more than this between the 20 % and the 100 % samples is a trend


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def memory_check(settings: Settings, tools: dict[str, str], workdir: Path, rate: float,
                 config: Config = RIP, total: int = 0) -> dict[str, Any]:
    """Send `total` requests (memory_requests by default) through one stack of `config`
    (rip's), sampling the balancer's RSS after every fifth of them."""
    total = total or settings.memory_requests
    directory = workdir / f"memory-{config.name}"
    directory.mkdir()
    print(f"\nmemory: {total:,} requests through one {config.name} stack (wrk "
          f"-t{settings.threads} -c{settings.connections}"
          f"{', Connection: close' if config.close else ''}), balancer RSS after every fifth",
          flush=True)
    done = errors = 0
    with launched(config, directory, tools) as stack:
        pid = stack.pid("balancer")
        url = f"{config.scheme}://127.0.0.1:{stack.port}{config.path}"
        samples = [{"requests": 0, "rss_kb": rss_kb(pid)}]
        print(f"  before: {samples[0]['rss_kb'] / 1024:.1f} MB", flush=True)
        for fifth in range(1, 6):
            while done < total * fifth // 5:
                seconds = max(1, math.ceil((total * fifth // 5 - done) / rate))
                run = parse_wrk(run_wrk(settings, url, seconds, config.close), config.name, 0)
                done += run.requests
                errors += run.non_2xx_3xx + run.socket_errors
                rate = max(run.requests_per_s, 100.0)
            samples.append({"requests": done, "rss_kb": rss_kb(pid)})
            print(f"  after {done:>9,} requests: {samples[-1]['rss_kb'] / 1024:.1f} MB "
                  f"(errors so far {errors})", flush=True)
        stack.check_alive()
    shutil.rmtree(directory, ignore_errors=True)
    # The limits are targets of the keep-alive check only; the others are information.
    return {"config": config.name} | judge_memory(samples, errors, targets=config is RIP)


def judge_memory(samples: list[dict[str, int]], errors: int,
                 targets: bool = True) -> dict[str, Any]:
    """Growth from the first fifth (warm) to the end as the trend; with `targets`, the final
    RSS and that growth against their limits."""
    final = samples[-1]["rss_kb"]
    growth = final - samples[1]["rss_kb"]
    later = samples[1:]
    slope = statistics.linear_regression(
        [sample["requests"] for sample in later], [sample["rss_kb"] for sample in later]
    ).slope
    judged: dict[str, Any] = {
        "samples": samples,
        "before_kb": samples[0]["rss_kb"],
        "after_kb": final,
        "growth_after_first_fifth_kb": growth,
        "slope_kb_per_100k_requests": round(slope * 100_000, 2),
        "errors": errors,
    }
    if targets:
        judged |= {
            "limit_kb": RSS_LIMIT_KB,
            "growth_limit_kb": RSS_GROWTH_KB,
            "within_limit": final <= RSS_LIMIT_KB,
            "no_growth_trend": growth <= RSS_GROWTH_KB,
        }
    return judged


def print_memory(memory: dict[str, Any]) -> None:
    if memory["config"] != RIP.name:  # the keep-alive check is the one with targets
        print(f"balancer RSS ({memory['config']}, information): "
              f"{memory['before_kb'] / 1024:.1f} MB before, {memory['after_kb'] / 1024:.1f} MB "
              f"after {memory['samples'][-1]['requests']:,} requests, "
              f"{memory['growth_after_first_fifth_kb']} kB more than after the first fifth "
              f"(slope {memory['slope_kb_per_100k_requests']} kB per 100k requests; "
              f"errors {memory['errors']})")
        return
    limit = "met" if memory["within_limit"] else "NOT met"
    trend = "met" if memory["no_growth_trend"] else "NOT met"
    print(
        f"balancer RSS ({memory['config']}): {memory['before_kb'] / 1024:.1f} MB before, "
        f"{memory['after_kb'] / 1024:.1f} MB after {memory['samples'][-1]['requests']:,} "
        f"requests: <= {RSS_LIMIT_KB // 1024} MB {limit}\n"
        f"balancer RSS growth from 20 % to 100 %: {memory['growth_after_first_fifth_kb']} kB "
        f"(slope {memory['slope_kb_per_100k_requests']} kB per 100k requests): no growth trend "
        f"(<= {RSS_GROWTH_KB} kB) {trend}; errors {memory['errors']}"
    )


def both_checks(settings: Settings, tools: dict[str, str], workdir: Path,
                rate: float = FIRST_RATE,
                rate_close: float = FIRST_RATE / 10) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keep-alive check (with targets) and the connection-per-request one (information);
    `rate` and `rate_close` (requests/s, from the throughput rounds) size wrk's runs."""
    memory = memory_check(settings, tools, workdir, rate)
    # A TLS connection per request: what a closed connection leaves behind shows here.
    memory_tls = memory_check(settings, tools, workdir, rate_close, HTTPS_CLOSE,
                              settings.memory_requests // 20)
    return memory, memory_tls


def main() -> int:
    parser = load_parser(__doc__.split("\n", 1)[0])
    settings = settings_from(parser, parser.parse_args())
    tools = ensure_tools(("wrk",))
    with work_directory() as workdir:
        memory, memory_tls = both_checks(settings, tools, workdir)
    print_memory(memory)
    print_memory(memory_tls)
    write_results({"memory": memory, "memory_https_close": memory_tls}, [], set())
    return 1 if memory["errors"] + memory_tls["errors"] else 0


if __name__ == "__main__":
    run_main(main, "memory.py")
