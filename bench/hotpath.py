"""The Python cost of the balancer's and the worker's hot paths, without sockets.

    .venv/bin/python bench/hotpath.py [--requests 100000] [--rounds 5]
    .venv/bin/python bench/hotpath.py --instructions [--requests 1000]

Drives the real protocol objects with in-memory transports, one request after the other:

    balancer         GET /ping: Client → Balancer → Upstream, and the worker's
                     response back to the client (access log and metrics on)
    balancer-local   GET /server, answered by the balancer itself
    worker           GET /ping as the balancer sends it: HttpConnection → the ASGI adapter →
                     examples/hello, and the response
    worker-max-rss   the same with max_rss on (a limit never reached): the cost of the checks

The kernel's part (reads, writes, wake-ups) is left out on purpose: this is the number to watch
while changing Python code on the hot path; bench/compare.py measures the whole.

By default: CPU µs per request, median and best of --rounds. These machines are noisy VMs
(rounds differ by 50 %), so --instructions counts instead: it runs each path under valgrind's
callgrind (apt install valgrind) for N and 3N requests and reports the difference / 2N, the
instructions per request, which repeat to within a few tenths of a percent.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ripsvc.apploader import parse_spec  # noqa: E402
from ripsvc.balancer.accesslog import AccessLog  # noqa: E402
from ripsvc.balancer.client import Client  # noqa: E402
from ripsvc.balancer.options import BalancerOptions  # noqa: E402
from ripsvc.balancer.server import make_balancer  # noqa: E402
from ripsvc.balancer.upstream import Upstream  # noqa: E402
from ripsvc.recycle import RecyclePolicy  # noqa: E402
from ripsvc.worker.adapters import make_host  # noqa: E402
from ripsvc.worker.core import Worker, WorkerOptions  # noqa: E402
from ripsvc.worker.http import HttpConnection  # noqa: E402

#: What wrk sends, and what the balancer makes of it for a worker.
REQUEST = b"GET /ping HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"
LOCAL_REQUEST = b"GET /server HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"
WORKER_REQUEST = (b"GET /ping HTTP/1.1\r\nhost: localhost:8080\r\nx-forwarded-for: 127.0.0.1\r\n"
                  b"x-forwarded-proto: http\r\nrip-client: 127.0.0.1:40000\r\n"
                  b"x-forwarded-host: localhost:8080\r\nrip-server: 127.0.0.1:8080\r\n"
                  b"x-request-id: 0123abcd-1f\r\n\r\n")
#: What examples/hello's worker answers to it.
RESPONSE = (b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 17:00:00 GMT\r\n"
            b"content-type: text/plain\r\ncontent-length: 23\r\n\r\npong 1796146863.879826\n")


class MemoryTransport:
    """Enough of asyncio.Transport for the protocols: counts writes, keeps the last one."""

    def __init__(self, peer: object = ("127.0.0.1", 40000)) -> None:
        self.peer = peer
        self.written = b""
        self.writes = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written = data
        self.writes += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("the benchmark's connection was closed")


class NullLog:
    """The access log's output: lines are formatted as usual and written nowhere."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def balancer_round(requests: int, local: bool = False) -> float:
    loop = uvloop.new_event_loop()
    balancer = make_balancer(BalancerOptions(app="bench"), loop)
    access_log = balancer.access_log
    assert isinstance(access_log, AccessLog)
    access_log.out = NullLog()
    access_log.journal = False
    slot = balancer.join("1", "/nonexistent.sock", "")
    upstream = Upstream(balancer, slot)
    worker_transport = MemoryTransport(None)
    upstream.connection_made(worker_transport)
    slot.upstream = upstream
    client = Client(balancer)
    client_transport = MemoryTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    started = time.process_time()
    if local:
        for _ in range(requests):
            client.data_received(LOCAL_REQUEST)
    else:
        for _ in range(requests):
            client.data_received(REQUEST)
            upstream.data_received(RESPONSE)
    elapsed = time.process_time() - started
    access_log.flush()
    loop.close()
    assert client_transport.writes == requests, client_transport.writes
    assert worker_transport.writes == (0 if local else requests), worker_transport.writes
    assert client_transport.written.startswith(b"HTTP/1.1 200 OK\r\n"), client_transport.written
    return elapsed / requests * 1e6


def worker_round(requests: int, max_rss: int = 0) -> float:
    loop = uvloop.new_event_loop()
    options = WorkerOptions(app=parse_spec(str(ROOT / "examples" / "hello")),
                            recycle=RecyclePolicy.parse("r:0,0s,0r"), max_rss=max_rss)
    worker = Worker(options, loop, make_host)
    loop.run_until_complete(worker.load())
    assert worker.max_rss == max_rss  # checked, when given
    conn = HttpConnection(worker)
    transport = MemoryTransport(None)
    conn.connection_made(transport)  # type: ignore[arg-type]

    async def drive() -> float:
        started = time.process_time()
        for _ in range(requests):
            conn.data_received(WORKER_REQUEST)
            while conn.active is not None:  # the app runs in a task
                await asyncio.sleep(0)
        return time.process_time() - started

    elapsed = loop.run_until_complete(drive())
    loop.run_until_complete(worker.host.shutdown())
    loop.close()
    assert transport.writes == requests, transport.writes
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n"), transport.written
    return elapsed / requests * 1e6


PATHS: dict[str, Callable[[int], float]] = {
    "balancer": balancer_round,
    "balancer-local": lambda requests: balancer_round(requests, local=True),
    "worker": worker_round,
    "worker-max-rss": lambda requests: worker_round(requests, max_rss=1 << 40),
}


def instructions(path: str, requests: int) -> float:
    """Instructions per request of `path`: callgrind's totals for N and 3N requests (after
    the same warm-up), so that start-up and the warm-up cancel out."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    totals = []
    with tempfile.TemporaryDirectory(prefix="rip-hotpath-") as directory:
        for count in (requests, 3 * requests):
            result = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/out",
                 sys.executable, __file__, "--run-once", path, "--requests", str(count)],
                capture_output=True, text=True, check=True)
            found = re.search(r"Collected : (\d+)", result.stderr)
            if found is None:
                raise SystemExit(f"no total from callgrind:\n{result.stderr}")
            totals.append(int(found[1]))
    return (totals[1] - totals[0]) / (2 * requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, help="per round (100000; --instructions: 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request with callgrind instead of timing")
    parser.add_argument("--run-once", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_once:  # under callgrind: a warm-up, then the measured requests
        PATHS[args.run_once](200)
        PATHS[args.run_once](args.requests)
        return
    for name, run in PATHS.items():
        if args.instructions:
            print(f"{name:15} {instructions(name, args.requests or 1000):9,.0f} "
                  "instructions/request")
            continue
        results = [run(args.requests or 100_000) for _ in range(args.rounds)]
        print(f"{name:15} {statistics.median(results):6.2f} µs/request, best {min(results):.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in results)})")


if __name__ == "__main__":
    main()
