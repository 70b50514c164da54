"""No client and no app bug takes the app down (SPEC §8; issue 19, items 1 to 13): each test
plays what was seen to empty the pool or disable a timeout, against a real balancer and real
workers, then checks the pool's invariant: every worker back in rotation, nothing busy or
queued, and a fresh request answered at once."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.client import control, fetch, pipeline, read_responses
from tests.support.procs import TEST_APPS
from tests.support.waiting import in_background, wait_for

GET = b"GET /pid HTTP/1.1\r\nHost: localhost\r\n\r\n"
HEAD = b"HEAD /pid HTTP/1.1\r\nHost: localhost\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nbody"


def healed(port: int, workers: int, timeout: float = 10.0, path: str = "/pid") -> None:
    """The invariant after every test: the pool back to `workers` ready workers, none busy
    or out of rotation, an empty queue, and a fresh request (`path`) answered within 2 s."""
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = json.loads(fetch(port, "/status").body)
        counts = status["workers"]
        assert isinstance(counts, dict)
        if (counts["ready"] == counts["total"] == workers
                and status["queue"] == {"depth": 0, "max": 1024}):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the pool did not heal: {status}")
    start = time.monotonic()
    assert fetch(port, path).status == 200
    assert time.monotonic() - start < 2


def slow_requests(port: int, count: int, ms: int = 700) -> list:
    threads = [in_background(fetch, port, f"/slow?ms={ms}")[0] for _ in range(count)]
    time.sleep(0.2)  # they have their workers
    return threads


@pytest.mark.parametrize("workers", [1, 2])
def test_pipelined_requests_while_every_worker_is_busy_keep_the_pool(start_stack, workers):
    """Item 1 (and 2, its compiled-only cause): pipelined requests queued behind busy workers
    emptied the pool for good. Each pair is answered in order, and the pool stays whole."""
    stack = start_stack(workers=workers)
    for data, methods in ((GET + GET, ["GET", "GET"]), (HEAD + GET, ["HEAD", "GET"]),
                          (GET + POST, ["GET", "POST"]), (GET + GET + GET, ["GET"] * 3)):
        busy = slow_requests(stack.port, workers)
        replies = pipeline(stack.port, data, methods)
        assert [r.status for r in replies] == [200] * len(methods), replies
        assert b"callback" not in b"".join(r.body for r in replies)
        if methods[-1] == "POST":
            assert replies[-1].body == b"body"
        for thread in busy:
            thread.join(10)
        healed(stack.port, workers)


def test_timeouts_still_work_after_pipelining(start_stack):
    """Item 2: the sweeper died of the pipelining bug, and with it every timeout. After the
    same sequence a slow client still gets 408 and an idle one is closed."""
    stack = start_stack(workers=1, args=("--header-timeout", "1", "--keepalive-timeout", "1"))
    busy = slow_requests(stack.port, 1, 500)
    assert [r.status for r in pipeline(stack.port, GET + GET, ["GET", "GET"])] == [200, 200]
    busy[0].join(10)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as slow:
        slow.sendall(b"GET /pid HTTP/1.1\r\nHo")
        start = time.monotonic()
        replies = read_responses(slow, ["GET"], timeout=5)
        assert [r.status for r in replies] == [408]
        assert time.monotonic() - start < 2.5
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as idle:
        idle.settimeout(5)
        start = time.monotonic()
        assert idle.recv(100) == b""
        assert time.monotonic() - start < 2.5
    healed(stack.port, 1)


@pytest.mark.parametrize(("app", "path"), [
    ("probe.py", "/fail-midway"),  # ASGI: raises after its first body message
    ("probe.py", "/short"),  # Content-Length larger than the body
    ("wsgi_cases.py", "/raise-late"),  # a WSGI generator that raises after its first piece
    ("wsgi_cases.py", "/exc-info-late"),  # WSGI exc_info after the headers went out
])
def test_a_route_that_fails_midway_costs_one_response_not_a_worker(start_stack, app, path):
    """Item 3: each such response emptied the pool by one worker (a GET was even retried on
    the next one). Now the client gets what the app sent, cut short, as under uvicorn and
    gunicorn, and every worker keeps serving."""
    stack = start_stack(workers=3, app=str(TEST_APPS / app))
    for _ in range(5):
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode())
            replies = read_responses(sock, ["GET"])
        assert len(replies) == 1 and replies[0].status == 200
        assert not replies[0].complete, "a broken response must not look complete"
        assert replies[0].body.startswith((b"first piece", b"ten bytes"))
        assert time.monotonic() - start < 3  # not held until the response timeout
    healed(stack.port, 3)
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"].get("retries", 0) == 0  # none ran twice


def test_upgrade_and_connect_get_exactly_one_response(start_stack):
    """Item 4: an Upgrade request ran on a worker with its body dropped, then got a second,
    unsolicited 501. Until WebSockets are carried, it is served as plain HTTP/1.1, once, with
    its body; CONNECT is refused by the balancer and reaches no worker."""
    stack = start_stack(workers=1)
    websocket = (b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    h2c = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n"
           b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
           b"Content-Length: 5\r\n\r\nhello")
    for data, body in ((websocket, b""), (h2c, b"hello")):
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(data + GET)
            replies = read_responses(sock, ["GET", "GET"], timeout=3)
            assert [(r.status, r.body) for r in replies] == [(200, body)]
            assert replies[0].header("connection") == "close"
    served = sum(w["served"] for w in control(stack.control, "pool")[1]["data"])
    connect = pipeline(stack.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443"
                       b"\r\n\r\n", ["CONNECT", "GET"], timeout=3)
    assert [r.status for r in connect] == [501]
    assert sum(w["served"] for w in control(stack.control, "pool")[1]["data"]) == served
    healed(stack.port, 1)


def test_a_half_sent_request_behind_one_in_flight_is_timed_out(start_stack):
    """Item 5: a half-sent request pipelined behind one in flight turned off every timeout of
    its connection. It now gets 408 once the header timeout has run, after the answer to the
    request before it, and the connection closes."""
    stack = start_stack(workers=1, args=("--header-timeout", "1", "--keepalive-timeout", "2"))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        # The header timeout runs out while the first request is still being answered.
        sock.sendall(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHo")
        start = time.monotonic()
        replies = read_responses(sock, ["GET", "GET"], timeout=10)
        assert [r.status for r in replies] == [200, 408]
        assert sock.recv(100) == b""  # closed
        assert time.monotonic() - start < 4
    healed(stack.port, 1)


def spool_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)"):  # the spools are unnamed temporary files
            found.append(target)
    return found


def test_a_client_that_stops_reading_is_disconnected_and_its_spools_freed(start_stack):
    """Item 6: a client that never read a large response kept its connection and two deleted
    temporary files forever. After the send timeout the connection is closed and the files
    are gone."""
    stack = start_stack(workers=1, args=("--send-timeout", "1"))
    body = b"x" * (3 << 20)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.port))
    try:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        wait_for(lambda: spool_files(stack.balancer.pid), timeout=5, what="a spool file")
        wait_for(lambda: not spool_files(stack.balancer.pid), timeout=6,
                 what="the spool files to be freed")
        sock.settimeout(5)
        received = 0
        try:
            while chunk := sock.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < len(body)  # cut off, not delivered
    finally:
        sock.close()
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"]["send_timeout"] == 1
    healed(stack.port, 1)


def reset_socket(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(data)
    return sock


def test_requests_whose_client_left_are_not_run(start_stack, short_tmp):
    """Item 7: five clients sent POST /charge and reset while the worker was busy; the app ran
    all five and none was logged. A queued request whose client left is dropped and logged
    (499); none runs."""
    log = short_tmp / "access.log"
    charged = short_tmp / "charged"
    stack = start_stack(workers=1, stdout=str(log))
    busy = slow_requests(stack.port, 1, 1000)
    for n in range(5):
        sock = reset_socket(stack.port, b"POST /charge?n=%d&file=%s HTTP/1.1\r\nHost: localhost"
                            b"\r\nContent-Length: 0\r\n\r\n" % (n, str(charged).encode()))
        time.sleep(0.05)
        sock.close()  # RST: SO_LINGER 0
    busy[0].join(10)
    healed(stack.port, 1)
    assert not charged.exists(), charged.read_text()
    wait_for(lambda: log.read_text().count(" 499 POST") == 5, timeout=5,
             what="five 499 lines in the access log")


def test_a_half_closed_client_gets_its_answer(start_stack):
    """Item 8: a client that shuts its sending side after the request got EOF and nothing."""
    stack = start_stack(workers=1)
    replies = pipeline(stack.port, GET, ["GET"], shut=True)
    assert [r.status for r in replies] == [200]
    busy = slow_requests(stack.port, 1, 300)  # also when it has to wait for a worker
    replies = pipeline(stack.port, GET, ["GET"], shut=True)
    assert [r.status for r in replies] == [200]
    busy[0].join(10)
    healed(stack.port, 1)


@pytest.fixture
def tiny_tmp(short_tmp: Path):
    """A 1 MiB tmpfs: a full disk for the balancer's spool."""
    path = short_tmp / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize(("where", "lines"), [("balancer", 1), ("worker", 2)])
def test_a_full_disk_during_an_upload_is_507_and_one_log_line(start_stack, tiny_tmp, where,
                                                              lines):
    """Item 9: a full temporary directory gave the client 400 and the balancer an unhandled
    task exception, with no word of the disk; the worker, which spools a large body too,
    answered 400 ("malformed request"). The balancer says it once (rate-limited), the worker
    once per request (one at a time), and the worker stays in the pool."""
    stack = start_stack(workers=1, **{f"{where}_env": {"TMPDIR": str(tiny_tmp)}})
    body = b"x" * (3 << 20)
    for _ in range(2):
        replies = pipeline(stack.port, b"POST /echo HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body, ["POST"])
        assert [r.status for r in replies] == [507]
    output = (stack.balancer if where == "balancer" else stack.workers[0]).output()
    assert output.count(f"cannot spool a request body to {tiny_tmp}") == lines, output
    assert "No space left on device" in output
    assert "Task exception was never retrieved" not in output
    assert "Traceback" not in output
    healed(stack.port, 1)


@pytest.mark.parametrize(("attr", "path"), [("wsgi", "/"), ("asgi", "/"), ("aiohttp_app", "/"),
                                           ("aiohttp_app", "/stream")])
def test_an_apps_own_rip_headers_never_reach_the_balancer(start_stack, attr, path):
    """An app's 503 with Rip-Worker-Busy made the balancer take it for the worker's "busy":
    the POST ran again on the other worker, and both left rotation until probed."""
    stack = start_stack(workers=2, app=f"{TEST_APPS / 'rip_headers.py'}:{attr}")
    replies = pipeline(stack.port, b"POST %s HTTP/1.1\r\nHost: localhost\r\n"
                       b"Content-Length: 2\r\n\r\nhi" % path.encode(), ["POST"])
    assert [r.status for r in replies] == [503]
    assert replies[0].body == b"503 the app itself is overloaded\n"
    assert replies[0].header("rip-worker-busy") is None
    output = "".join(worker.output() for worker in stack.workers)
    assert "the app's response header rip-worker-busy was left out" in output
    _, pool = control(stack.control, "pool")
    assert [w["state"] for w in pool["data"]] == ["ready", "ready"], pool


def test_running_out_of_descriptors_is_logged_and_counted(start_stack):
    """Item 10: with descriptors exhausted, new clients were reset with no word of it."""
    stack = start_stack(workers=1)
    subprocess.run(["prlimit", "--pid", str(stack.balancer.pid), "--nofile=128:128"],
                   check=True)
    held = []
    try:
        for _ in range(200):
            try:
                held.append(socket.create_connection(("127.0.0.1", stack.port), timeout=2))
            except OSError:
                break
        stack.balancer.wait_output("out of file descriptors", timeout=5)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"]["descriptors_exhausted"] >= 1
    healed(stack.port, 1)  # accepting again once descriptors are free
    assert stack.balancer.output().count("out of file descriptors") == 1  # rate-limited


@pytest.mark.parametrize(("data", "status"), [
    # Item 11: which Host would the app see? RFC 9112 §3.2: 400.
    (b"GET /pid HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n\r\n", 400),
    (b"GET /pid HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400),
    # Item 12: a trailer is not a header field: Host in a trailer does not pass the check.
    (b"POST /echo HTTP/1.1\r\nHost: evil.example\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1\r\na\r\n0\r\nHost: localhost\r\n\r\n", 404),
    # Item 13: two spaces in the request line.
    (b"POST  /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", 400),
])
def test_framing_the_rfc_refuses(start_stack, data, status):
    stack = start_stack(workers=1)
    assert [r.status for r in pipeline(stack.port, data, ["GET"])] == [status]
    healed(stack.port, 1)


def test_trailers_never_become_header_fields(start_stack):
    """Item 12: a trailer reached the app as a header, and `Connection: host` in a trailer
    removed Host from the forwarded request."""
    stack = start_stack(workers=1)
    replies = pipeline(stack.port, b"POST /headers HTTP/1.1\r\nHost: localhost\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Injected: 1\r\n"
                       b"Connection: host\r\n\r\n", ["POST"])
    seen = json.loads(replies[0].body)
    assert "x-injected" not in seen
    assert seen["host"] == "localhost"


def test_valid_framing_the_balancer_refused_or_mangled(start_stack):
    """Item 13: `Content-Length: 5 ` (white space after the value is allowed) got 400; an
    HTTP/1.0 request with Connection: keep-alive was kept alive without saying so."""
    stack = start_stack(workers=1)
    replies = pipeline(stack.port, b"POST /echo HTTP/1.1\r\nHost: localhost\r\n"
                       b"Content-Length: 5 \r\n\r\nhello", ["POST"])
    assert [(r.status, r.body) for r in replies] == [(200, b"hello")]
    replies = pipeline(stack.port, b"GET /pid HTTP/1.0\r\nHost: localhost\r\nConnection: "
                       b"keep-alive\r\n\r\nGET /pid HTTP/1.0\r\nHost: localhost\r\n"
                       b"Connection: keep-alive\r\n\r\n", ["GET", "GET"])
    assert [r.status for r in replies] == [200, 200]
    assert all(r.header("connection") == "keep-alive" for r in replies)
    healed(stack.port, 1)


def test_underscored_header_names_are_dropped(start_stack):
    """X_Auth_User is X-Auth-User to WSGI and to many frameworks: a client must not pass one
    for the other (nginx and gunicorn drop them too)."""
    stack = start_stack(workers=1)
    replies = pipeline(stack.port, b"GET /headers HTTP/1.1\r\nHost: localhost\r\n"
                       b"X_Auth_User: admin\r\nX-Auth-User: proxy-says\r\n\r\n", ["GET"])
    seen = json.loads(replies[0].body)
    assert seen["x-auth-user"] == "proxy-says"
    assert not [name for name in seen if "_" in name]

