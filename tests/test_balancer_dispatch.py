"""The balancer in front of real workers: pool, queue, retries, timeouts, slow clients."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
import time

from tests.support.client import control, fetch, raw_tcp, request, tcp
from tests.support.waiting import in_background, wait_for


def busy_count(stack) -> int:
    return json.loads(fetch(stack.port, "/status").body)["workers"]["busy"]


def test_round_robin_over_idle_workers_only(start_stack):
    stack = start_stack(workers=2)
    conn = tcp(stack.port)
    served = [request(conn, "GET", "/pid").headers["x-pid"] for _ in range(6)]
    assert set(served) == set(stack.pids())
    assert all(a != b for a, b in itertools.pairwise(served)), served
    # With one worker busy, every request goes to the other one.
    thread, slow = in_background(fetch, stack.port, "/slow?ms=1500")
    wait_for(lambda: busy_count(stack) == 1, what="one busy worker")
    others = {request(conn, "GET", "/pid").headers["x-pid"] for _ in range(5)}
    thread.join(10)
    assert len(others) == 1
    assert others != {slow["value"].headers["x-pid"]}


def test_queue_is_fifo_503_when_full_504_on_timeout(start_stack):
    stack = start_stack(workers=1, args=("--max-queue", "3", "--queue-timeout-ms", "3000"))
    blocker, _ = in_background(fetch, stack.port, "/slow?ms=800")
    wait_for(lambda: busy_count(stack) == 1, what="the worker busy")
    queued = []
    for tag in range(3):
        queued.append(in_background(fetch, stack.port, f"/slow?ms=10&tag={tag}"))
        wait_for(lambda n=tag + 1: _queue_depth(stack) == n, what=f"{tag + 1} queued")
    full = fetch(stack.port, "/pid")
    assert full.status == 503
    assert full.seconds < 0.5
    done = []
    for thread, result in queued:
        thread.join(10)
        reply = result["value"]
        assert reply.status == 200
        done.append((result["at"], reply.body.split()[1]))
    blocker.join(10)
    assert [tag for _, tag in sorted(done)] == [b"0", b"1", b"2"]  # arrival order



def test_queue_timeout_answers_504(start_stack):
    stack = start_stack(workers=1, args=("--queue-timeout-ms", "500"))
    blocker, _ = in_background(fetch, stack.port, "/slow?ms=1500")
    wait_for(lambda: busy_count(stack) == 1, what="the worker busy")
    timed = fetch(stack.port, "/pid")
    assert timed.status == 504
    assert 0.4 <= timed.seconds < 1.2
    blocker.join(10)


def _queue_depth(stack) -> int:
    return json.loads(fetch(stack.port, "/status").body)["queue"]["depth"]


def test_busy_worker_is_retried_on_another(start_stack, short_tmp):
    from tests.support.client import get

    stack = start_stack(workers=2)
    first, second = stack.workers
    # Keep worker 1 busy with a request that bypasses the balancer: it answers the
    # balancer's request with Rip-Worker-Busy, and the balancer retries on worker 2.
    mark = short_tmp / "taken"
    thread, _ = in_background(get, first.socket_path, f"/slow?ms=1500&mark={mark}")
    wait_for(mark.exists, what="worker 1 busy")
    pids = {fetch(stack.port, "/pid").headers["x-pid"] for _ in range(4)}
    thread.join(10)
    assert pids == {str(second.pid)}
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"]["worker_busy"] >= 1
    assert "rip-worker-busy" not in fetch(stack.port, "/pid").headers


def test_connect_failure_retries_and_takes_the_worker_out_of_rotation(start_stack, short_tmp):
    """A worker whose socket refuses is out of rotation (probed), not out of the pool: only
    its manager knows whether its process is gone for good."""
    stack = start_stack(workers=1)
    status, reply = control(stack.control, "join",
                            {"id": "ghost", "socket": str(short_tmp / "nothing.sock")})
    assert status == 200 and reply["ok"]
    for _ in range(4):
        assert fetch(stack.port, "/pid").status == 200
    _, pool = control(stack.control, "pool")
    states = {w["id"]: (w["state"], w["reason"]) for w in pool["data"]}
    assert states["1"] == ("ready", "")
    assert states["ghost"][0] == "probing"
    assert "cannot connect" in states["ghost"][1]


def test_sigkill_mid_request_get_is_retried_post_is_not(start_stack, short_tmp):
    stack = start_stack(workers=2)
    mark = short_tmp / "started"

    def kill_when_started(worker_pids):
        wait_for(mark.exists, what="the app to take the request")
        _, pool = control(stack.control, "pool")
        busy = next(w for w in pool["data"] if w["state"] == "busy")
        victim = stack.workers[int(busy["id"]) - 1]
        worker_pids.append(victim.pid)
        victim.signal(signal.SIGKILL)

    killed: list[int] = []
    killer, _ = in_background(kill_when_started, killed)
    reply = fetch(stack.port, f"/slow?ms=2000&mark={mark}")
    killer.join(10)
    assert reply.status == 200  # replayed on the surviving worker
    assert reply.headers["x-pid"] != str(killed[0])

    mark.unlink()
    killer, _ = in_background(kill_when_started, killed)
    post = fetch(stack.port, f"/slow?ms=2000&mark={mark}", method="POST", body=b"x")
    killer.join(10)
    assert post.status == 502  # a POST the worker may have started is not replayed
    _, pool = control(stack.control, "pool")
    # Both are out of rotation until a probe finds them again (here, with no manager to
    # restart them, never), still counted in the pool.
    assert [w["state"] for w in pool["data"]] == ["probing", "probing"]


def test_hung_worker_gets_504_within_the_timeout_and_is_reported(start_stack):
    stack = start_stack(workers=1, args=("--response-timeout", "0.5"))
    reply = fetch(stack.port, "/slow?ms=5000")
    assert reply.status == 504
    assert reply.seconds < 1.5
    _, stats = control(stack.control, "stats")
    assert stats["data"]["hung"] == ["1"]
    assert fetch(stack.port, "/status").status == 503


def test_slow_uploader_does_not_hold_the_worker(start_stack):
    stack = start_stack(workers=1)
    body = b"u" * 100_000
    head = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    thread, upload = in_background(raw_tcp, stack.port, head + body[:1000], pause=1.5,
                                   rest=body[1000:])
    time.sleep(0.3)
    for _ in range(5):  # the one worker keeps serving while the upload dawdles
        reply = fetch(stack.port, "/pid")
        assert reply.status == 200 and reply.seconds < 0.5
    thread.join(10)
    assert upload["value"].endswith(body)


def test_slow_reader_does_not_hold_the_worker(start_stack):
    stack = start_stack(workers=1)
    size = 16 << 20  # far beyond socket buffers: the balancer holds it, not the worker
    sock = socket.create_connection(("127.0.0.1", stack.port))
    sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
    time.sleep(0.5)
    for _ in range(5):
        reply = fetch(stack.port, "/pid")
        assert reply.status == 200 and reply.seconds < 0.5
    received = b""
    sock.settimeout(10)
    while len(received) < size:
        chunk = sock.recv(1 << 20)
        assert chunk
        received += chunk
    sock.close()
    assert received.endswith(b"b" * 1000)
    assert b"content-length: %d" % size in received[:1000]


def test_streaming_response_passes_through_and_holds_its_worker(start_stack):
    stack = start_stack(workers=1)
    conn = tcp(stack.port)
    conn.request("GET", "/stream?n=3&ms=400")
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.getheader("x-accel-buffering") is None
    start = time.monotonic()
    first = resp.read1(100) if hasattr(resp, "read1") else resp.read(8)
    assert first.startswith(b"piece 0")
    assert time.monotonic() - start < 0.3  # not buffered until the end
    assert busy_count(stack) == 1  # the stream holds its worker
    rest = resp.read()
    assert first + rest == b"piece 0\npiece 1\npiece 2\n"
    assert busy_count(stack) == 0


def test_500_requests_over_keep_alive_match_their_responses(start_stack):
    stack = start_stack(workers=2)
    errors: list[str] = []

    def client(n: int) -> None:
        conn = tcp(stack.port)
        for i in range(50):
            body = b"client %d request %d" % (n, i)
            reply = request(conn, "POST", "/echo", body=body)
            if reply.status != 200 or reply.body != body:
                errors.append(f"{n}/{i}: {reply.status} {reply.body[:50]!r}")
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    _, stats = control(stack.control, "stats")
    assert sum(w["served"] for w in control(stack.control, "pool")[1]["data"]) >= 500
    assert stats["data"]["status"] == "healthy"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_many_slow_readers(start_stack):
    stack = start_stack(workers=2)
    before = rss_mb(stack.balancer.pid)
    size, clients = 4 << 20, 30
    socks = []
    for _ in range(clients):  # 120 MiB of responses that nobody reads yet
        sock = socket.create_connection(("127.0.0.1", stack.port))
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
        socks.append(sock)
    wait_for(lambda: sum(w["served"] for w in control(stack.control, "pool")[1]["data"])
             >= clients, timeout=30, what="every response read from the workers")
    grown = rss_mb(stack.balancer.pid) - before
    assert grown < 40, f"balancer RSS grew by {grown:.1f} MiB for {clients} slow readers"
    assert fetch(stack.port, "/pid").status == 200  # the workers are free meanwhile
    for sock in socks:
        sock.settimeout(10)
        received = 0
        while received < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        sock.close()
