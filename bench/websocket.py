"""WebSocket echo: rip (balancer → a WebSocket worker) against uvicorn serving the same app
directly, in one run, as ratios.

    .venv/bin/python bench/websocket.py [--connections 100] [--duration 5] [--rounds 3]

Each of `--connections` clients sends a message and waits for its echo, again and again, for
`--duration` seconds; the servers take turns within each round (this VM is small and noisy),
and the medians of the rounds are reported: round trips per second, their latency (p50, p99),
and the servers' CPU per round trip. The client is this script in a process of its own, on
uvloop, writing pre-framed messages and reading echoes by their length, so that it costs as
little as a client can. uvicorn runs with wsproto (`--ws wsproto`), the library rip's
WebSocket worker uses too. Results: bench/results/websocket.json. Target: rip >= 0.7x uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Uvicorn:
    name = "uvicorn"

    def __init__(self, port: int) -> None:
        self.port = port
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "wsecho:app", "--app-dir", str(ROOT / "bench"),
             "--port", str(port), "--log-level", "warning", "--no-access-log", "--ws",
             "wsproto", "--loop", "uvloop", "--http", "httptools"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        wait_port(port)

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


class Rip:
    """The balancer with one WebSocket worker, both as rip-server would start them (sockets
    bound by the processes themselves here: the data path is the same)."""

    name = "rip"

    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = tempfile.mkdtemp(prefix="rip-wsbench-")
        socket_path = f"{self.directory}/ws1.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [sys.executable, "-m", "ripsvc.worker", str(ROOT / "bench" / "wsecho.py"),
             "--websocket", "--bind", socket_path, "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        balancer = subprocess.Popen(
            [sys.executable, "-m", "ripsvc.balancer", "--app", "wsbench", "--listen",
             f"tcp:127.0.0.1:{port}", "--websocket-worker", f"ws1={socket_path}",
             "--no-access-log", "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [balancer, worker]
        wait_port(port)

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(40)
        shutil.rmtree(self.directory, ignore_errors=True)


def frame(payload: bytes) -> bytes:
    """A masked client frame (binary, one piece)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    header = bytes([0x82, 0x80 | length]) if length < 126 else \
        bytes([0x82, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + mask + masked


async def client(port: int, payload: bytes, until: float, latencies: list[float],
                 counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: " + KEY + b"\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"no WebSocket: {head[:80]!r}")
    message = frame(payload)
    echo = 2 + (0 if len(payload) < 126 else 2) + len(payload)
    sampled = 0
    while time.monotonic() < until:
        start = time.perf_counter()
        writer.write(message)
        await reader.readexactly(echo)
        counts[0] += 1
        sampled += 1
        if sampled % 4 == 0:  # every fourth, to keep the list small
            latencies.append(time.perf_counter() - start)
    writer.close()


def load(port: int, connections: int, duration: float, size: int) -> dict[str, float]:
    """Run in a process of its own (--client): round trips/s and latency."""
    import uvloop

    latencies: list[float] = []
    counts = [0]

    async def main() -> float:
        until = time.monotonic() + duration
        start = time.monotonic()
        await asyncio.gather(*(client(port, b"x" * size, until, latencies, counts)
                               for _ in range(connections)))
        return time.monotonic() - start

    elapsed = uvloop.run(main())
    latencies.sort()
    return {"rate": counts[0] / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def measure(server: Uvicorn | Rip, args: argparse.Namespace) -> dict[str, float]:
    cpu_before = cpu_seconds([p.pid for p in server.procs])
    each_before = [cpu_seconds([p.pid]) for p in server.procs]
    result = subprocess.run(
        [sys.executable, __file__, "--client", str(server.port), "--connections",
         str(args.connections), "--duration", str(args.duration), "--size", str(args.size)],
        capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(result.stdout)
    cpu = cpu_seconds([p.pid for p in server.procs]) - cpu_before
    trips = figures["rate"] * args.duration
    figures["cpu_us"] = cpu / trips * 1e6
    for n, proc in enumerate(server.procs):  # rip: the balancer, then the worker
        figures[f"cpu_us_{n}"] = (cpu_seconds([proc.pid]) - each_before[n]) / trips * 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(load(args.client, args.connections, args.duration, args.size)))
        return
    servers = [Uvicorn(free_port()), Rip(free_port())]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    try:
        for n in range(args.rounds):
            order = servers if n % 2 == 0 else list(reversed(servers))
            for server in order:
                runs[server.name].append(measure(server, args))
                last = runs[server.name][-1]
                print(f"round {n + 1} {server.name:8} {last['rate']:9,.0f} round trips/s, "
                      f"p50 {last['p50_ms']:.2f} ms, p99 {last['p99_ms']:.2f} ms, "
                      f"{last['cpu_us']:.0f} µs CPU each ("
                      + " + ".join(f"{last[f'cpu_us_{k}']:.0f}" for k in range(len(server.procs)))
                      + ")", flush=True)
    finally:
        for server in servers:
            server.close()
    medians = {name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for name, rounds in runs.items()}
    ratio = medians["rip"]["rate"] / medians["uvicorn"]["rate"]
    print(f"median: rip {medians['rip']['rate']:,.0f}/s, uvicorn "
          f"{medians['uvicorn']['rate']:,.0f}/s: rip / uvicorn = {ratio:.2f}x (target >= 0.7x); "
          f"p99 {medians['rip']['p99_ms']:.2f} against {medians['uvicorn']['p99_ms']:.2f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "websocket.json").write_text(json.dumps({
        "when": time.strftime("%Y-%m-%d %H:%M"), "connections": args.connections,
        "duration": args.duration, "rounds": args.rounds, "size": args.size,
        "medians": medians, "ratio": ratio, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
