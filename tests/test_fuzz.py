"""A seeded, time-bounded fuzz run against real processes: rip-server (manager, balancer and
three workers) under hostile and broken clients, failing routes, killed and frozen workers,
then the pool's invariant: every worker back in rotation, nothing busy or queued, a fresh
request answered within 2 s, and no traceback but the app's own in any log.

    RIPSVC_FUZZ_SEED=7 pytest tests/test_fuzz.py    # another seed (default: 19)
    RIPSVC_FUZZ_SECONDS=60 pytest tests/test_fuzz.py  # a longer run (default: 15 s)

Every load loop is bounded in count and time; only loopback; only the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from pathlib import Path

from ripsvc import paths
from tests.support.client import control, fetch, read_responses
from tests.support.procs import TEST_APPS
from tests.support.server import Server

SEED = int(os.environ.get("RIPSVC_FUZZ_SEED", "19"))
SECONDS = float(os.environ.get("RIPSVC_FUZZ_SECONDS", "15"))
WORKERS = 3
CLIENTS = 6
#: What the app itself logs with a traceback, on purpose (its failing routes).
APP_ERRORS = ("this route fails midway", "ZeroDivisionError")

REQUESTS = [
    b"GET /pid HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"HEAD /pid HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /slow?ms=%d HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s",
    b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /big?size=%d HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /stream?n=3&ms=30 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /fail-midway HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /short HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /pid HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /pid HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
]
BAD = [
    b"GET /pid HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET  /pid HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET /pid HTTP/1.1\r\nHost: localhost\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
]


def one_request(rng: random.Random) -> bytes:
    template = rng.choice(REQUESTS)
    if b"/slow" in template:
        return template % rng.randint(1, 300)
    if b"Content-Length: %d" in template:
        body = rng.randbytes(rng.choice([0, 10, 5000, 200_000]))
        return template % (len(body), body)
    if b"/big" in template:
        return template % rng.choice([10, 70_000, 2_000_000])
    return template


class Fuzzer:
    def __init__(self, port: int, seed: int, until: float) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.until = until
        self.actions = 0
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        actions = [self.normal, self.pipelined, self.bad, self.reset_midway, self.half_close,
                   self.trickle, self.not_reading, self.reset_before_answer]
        while time.monotonic() < self.until and self.actions < 5000:
            self.actions += 1
            # OSError: the balancer closed on us, which is what some of these ask for
            with contextlib.suppress(OSError):
                self.rng.choice(actions)()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.settimeout(5)
        return sock

    def count(self, replies: list) -> None:
        for reply in replies:
            self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1

    def normal(self) -> None:
        with self.connect() as sock:
            for _ in range(self.rng.randint(1, 4)):
                data = one_request(self.rng)
                sock.sendall(data)
                replies = read_responses(sock, [data.split(b" ")[0].decode()], timeout=10)
                self.count(replies)
                if not replies or not replies[0].complete:
                    return

    def pipelined(self) -> None:
        batch = [one_request(self.rng) for _ in range(self.rng.randint(2, 4))]
        with self.connect() as sock:
            sock.sendall(b"".join(batch))
            self.count(read_responses(sock, [d.split(b" ")[0].decode() for d in batch], 10))

    def bad(self) -> None:
        with self.connect() as sock:
            sock.sendall(one_request(self.rng) + self.rng.choice(BAD))
            self.count(read_responses(sock, ["GET", "GET"], timeout=5))

    def reset(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def reset_midway(self) -> None:
        sock = self.connect()
        data = one_request(self.rng)
        sock.sendall(data[: self.rng.randint(1, len(data))])
        time.sleep(self.rng.random() * 0.05)
        self.reset(sock)

    def reset_before_answer(self) -> None:
        sock = self.connect()
        sock.sendall(b"GET /slow?ms=%d HTTP/1.1\r\nHost: localhost\r\n\r\n"
                     % self.rng.randint(50, 400))
        time.sleep(self.rng.random() * 0.2)
        self.reset(sock)

    def half_close(self) -> None:
        with self.connect() as sock:
            data = one_request(self.rng)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            self.count(read_responses(sock, [data.split(b" ")[0].decode()], timeout=10))

    def trickle(self) -> None:
        with self.connect() as sock:
            data = one_request(self.rng)[:300]
            for start in range(0, len(data), 7):
                sock.sendall(data[start:start + 7])
                time.sleep(0.002)

    def not_reading(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(b"GET /big?size=3000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(self.rng.random() * 0.3)
        if self.rng.random() < 0.5:
            self.reset(sock)
        else:
            sock.close()


def worker_pids(server: Server) -> list[int]:
    return [pid for pid in server.children()
            if "ripsvc.worker" in Path(f"/proc/{pid}/cmdline").read_text()]


def faults(server: Server, rng: random.Random, until: float) -> None:
    """A worker killed now and then, or frozen for a moment."""
    while time.monotonic() < until:
        time.sleep(rng.uniform(1.0, 3.0))
        pids = worker_pids(server)
        if not pids or time.monotonic() >= until:
            return
        victim = rng.choice(pids)
        if rng.random() < 0.5:
            os.kill(victim, signal.SIGKILL)
        else:
            os.kill(victim, signal.SIGSTOP)
            time.sleep(rng.uniform(0.1, 0.8))
            os.kill(victim, signal.SIGCONT)


def test_fuzz_then_the_pool_heals(short_tmp):
    server = Server(short_tmp, str(TEST_APPS / "probe.py"), f"w:{WORKERS}", "r:0,0s,0r",
                    "--response-timeout", "3", "--header-timeout", "1", "--body-timeout", "1",
                    "--keepalive-timeout", "2", "--send-timeout", "2",
                    "--queue-timeout-ms", "3000", "--watchdog-sec", "5")
    try:
        server.wait_healthy(WORKERS)
        until = time.monotonic() + SECONDS
        fuzzers = [Fuzzer(server.port, SEED * 100 + n, until) for n in range(CLIENTS)]
        threads = [threading.Thread(target=f.run, daemon=True) for f in fuzzers]
        threads.append(threading.Thread(target=faults, daemon=True,
                                        args=(server, random.Random(SEED), until)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 30)
        assert not any(thread.is_alive() for thread in threads), "a fuzz client hangs"
        statuses: dict[int, int] = {}
        for fuzzer in fuzzers:
            for status, count in fuzzer.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        print(f"seed {SEED}: {sum(f.actions for f in fuzzers)} actions, statuses {statuses}")
        assert statuses.get(200, 0) > 50, statuses

        deadline = time.monotonic() + 20
        status: dict = {}
        while time.monotonic() < deadline:
            status = json.loads(fetch(server.port, "/status").body)
            workers = status["workers"]
            if (workers["ready"] == workers["total"] == WORKERS
                    and status["queue"]["depth"] == 0):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"seed {SEED}: the pool did not heal: {status}\n"
                                 f"{server.output()[-5000:]}")
        start = time.monotonic()
        assert fetch(server.port, "/pid").status == 200
        assert time.monotonic() - start < 2
        _, stats = control(str(paths.app_dir(server.name) / "balancer.ctl"), "stats")
        counters = stats["data"]["counters"]
        assert counters.get("internal_errors", 0) == 0, counters
        assert counters.get("invariant_repairs", 0) == 0, counters
    finally:
        server.close()
    output = server.output()
    for bad in ("internal error", "Fatal error", "Task exception", "Exception in callback"):
        assert bad not in output, f"seed {SEED}: {bad!r} in the log:\n{output[-8000:]}"
    tracebacks = output.count("Traceback (most recent call last)")
    app_errors = sum(output.count(f"{error}") for error in APP_ERRORS)
    assert tracebacks <= app_errors, f"seed {SEED}: a traceback not the app's:\n{output[-8000:]}"
