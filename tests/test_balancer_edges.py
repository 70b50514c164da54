"""The balancer's edge: limits, framing, slow clients, headers, endpoints, logs, control plane."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

from tests.support.client import control, fetch, raw_tcp, request, tcp
from tests.support.waiting import wait_for

GOOD = b"GET /pid HTTP/1.1\r\nHost: localhost\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n"
         b"Content-Length: 3\r\n\r\nabc", 400),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nabc\r\n", 400),
        (b"GET /pid HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        (b"GET /pid HTTP/1.1\nHost: localhost\n\n", 400),
        (b"GET /pid HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length : 3\r\n\r\nabc", 400),
        (b"GET /pid HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", 400),
        (GOOD + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nExpect: something-else\r\n\r\n", 417),
    ],
    ids=["cl+te", "two-cl", "bad-chunk", "obs-fold", "bare-lf", "bare-cr", "space-in-name",
         "negative-cl", "big-header", "long-url", "body-limit", "expectation"],
)
def test_malformed_or_oversized_requests_are_refused_and_closed(start_stack, data, status):
    stack = start_stack(workers=1, args=("--max-body", "1M"))
    reply = raw_tcp(stack.port, data)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:200]
    assert b"connection: close" in reply.lower()
    assert fetch(stack.port, "/pid").status == 200  # the balancer is unharmed


def test_chunked_body_over_the_limit_gets_413(start_stack):
    stack = start_stack(workers=1, args=("--max-body", "64K"))
    conn = tcp(stack.port)
    conn.request("POST", "/echo", body=iter([b"x" * 40_000, b"y" * 40_000]),
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    ok = request(tcp(stack.port), "POST", "/echo", body=b"z" * (64 << 10))
    assert ok.status == 200 and len(ok.body) == 64 << 10


def test_expect_100_continue_is_answered_before_the_body(start_stack):
    stack = start_stack(workers=1)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        reply = sock.recv(1000)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello")


def test_expect_100_continue_from_an_http_10_client_is_ignored(start_stack):
    """RFC 9110: a 100 (Continue) is never sent to an HTTP/1.0 client, which would take it
    for its answer."""
    stack = start_stack(workers=1)
    reply = raw_tcp(stack.port, b"POST /echo HTTP/1.0\r\nHost: localhost\r\n"
                    b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", pause=0.3,
                    rest=b"hello")
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello"), reply


def test_headers_named_by_connection_are_hop_by_hop_but_host_stays(start_stack):
    stack = start_stack(workers=1)
    reply = request(tcp(stack.port), "GET", "/headers",
                    headers={"Connection": "keep-alive, x-hop, host", "X-Hop": "1",
                             "X-Kept": "2"})
    seen = json.loads(reply.body)
    assert "x-hop" not in seen and seen["x-kept"] == "2"
    assert seen.get("host") == f"127.0.0.1:{stack.port}", seen


def test_slowloris_gets_408_and_idle_keep_alive_is_closed(start_stack):
    stack = start_stack(workers=1, args=("--header-timeout", "0.5", "--keepalive-timeout", "0.5"))
    start = time.monotonic()
    reply = raw_tcp(stack.port, b"GET /pid HTTP/1.1\r\nHost: localhost\r\n", timeout=5)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - start < 2
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(GOOD + b"\r\n")
        first = sock.recv(1000)
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        assert sock.recv(1000) == b""  # closed by the balancer once idle too long
        assert 0.3 < time.monotonic() - start < 2


def test_internal_headers_stripped_both_ways_and_forwarded_headers_set(start_stack):
    stack = start_stack(workers=1)
    reply = fetch(stack.port, "/headers", headers={
        "Rip-Worker-Busy": "1", "Rip-Anything": "x", "X-Forwarded-For": "6.6.6.6",
        "X-Request-Id": "forged", "Connection": "keep-alive, X-Hop", "X-Hop": "1"})
    seen = json.loads(reply.body)
    assert not [k for k in seen if k.startswith("rip-")]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{stack.port}"
    assert "x-hop" not in seen and "connection" not in seen
    assert seen["x-request-id"] != "forged"
    assert seen["x-request-id"] == reply.headers["x-request-id"]
    secret = fetch(stack.port, "/secret")
    assert secret.status == 200
    assert not [k for k in secret.headers if k.startswith("rip-")]


def test_head_requests_keep_the_content_length_and_send_no_body(start_stack):
    stack = start_stack(workers=1)
    conn = tcp(stack.port)
    conn.request("HEAD", "/big?size=1234")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-length") == "1234"
    assert resp.read() == b""
    assert request(conn, "GET", "/pid").status == 200  # the connection is still in sync


def test_status_and_server_endpoints(start_stack):
    stack = start_stack(workers=2)
    reply = fetch(stack.port, "/status")
    status = json.loads(reply.body)
    assert reply.status == 200
    assert status["status"] == "healthy"
    assert status["app"] == "probe"
    assert status["workers"] == {"ready": 2, "busy": 0, "probing": 0, "draining": 0,
                                 "drained": 0, "total": 2}
    assert status["queue"] == {"depth": 0, "max": 1024}
    assert status["ports"] == [f"http://127.0.0.1:{stack.port}"]
    assert status["uptime"] >= 0 and status["version"]
    server = fetch(stack.port, "/server")
    assert (server.status, server.body) == (200, b"ok\n")
    for worker_id in ("1", "2"):
        assert control(stack.control, "leave", {"id": worker_id})[0] == 200
    degraded = fetch(stack.port, "/status")
    assert degraded.status == 503
    assert json.loads(degraded.body)["status"] == "degraded"
    assert fetch(stack.port, "/server").status == 200


def test_status_paths_are_configurable(start_stack):
    stack = start_stack(workers=1, args=("--status-path", "/_rip/status",
                                         "--server-path", "/_rip/up"))
    assert json.loads(fetch(stack.port, "/_rip/status").body)["status"] == "healthy"
    assert fetch(stack.port, "/_rip/up").body == b"ok\n"
    assert fetch(stack.port, "/status").headers.get("x-pid")  # now the app's own path


def test_access_log_human(start_stack):
    stack = start_stack(workers=1)
    reply = fetch(stack.port, "/pid?x=1")
    line = stack.balancer.wait_output(reply.headers["x-request-id"])
    entry = next(ln for ln in line.splitlines() if reply.headers["x-request-id"] in ln)
    fields = entry.split()
    assert fields[1:3] == ["200", "GET"]
    assert fields[3].endswith("ms") and fields[4] == "w1"
    assert fields[-3] == "/pid?x=1"
    # Fixed width: time, status, method in 7, duration in 9 with one decimal, worker in 5,
    # bytes in 9, then the request id and the target as they are, the time waited for a
    # worker and the worker's.
    layout = (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 200 GET     [ \d]{7}\.\dms w1    "
              r" [ \d]{8}\dB " + re.escape(reply.headers["x-request-id"]) + r" /pid\?x=1"
              r" queue=0\.0ms worker=\d+\.\dms")
    assert re.fullmatch(layout, entry), entry


def test_access_log_json(start_stack):
    stack = start_stack(workers=1, args=("--json-logging",))
    reply = fetch(stack.port, "/pid")
    rid = reply.headers["x-request-id"]
    text = stack.balancer.wait_output(rid)
    entry = json.loads(next(ln for ln in text.splitlines() if rid in ln))
    assert entry["status"] == 200 and entry["path"] == "/pid" and entry["worker"] == "1"
    assert entry["request_id"] == rid and entry["duration_ms"] >= 0 and entry["app"] == "probe"


def test_access_log_that_cannot_be_written_stops_nothing(start_stack):
    # stdout on /dev/full: every write of the log fails with ENOSPC, as on a full disk.
    stack = start_stack(workers=1, stdout="/dev/full")
    conn = tcp(stack.port)
    try:  # more requests than lines are kept before a write (FLUSH_LINES)
        statuses = {request(conn, "GET", "/pid").status for _ in range(600)}
    finally:
        conn.close()
    assert statuses == {200}

    def lost() -> int:
        return control(stack.control, "stats")[1]["data"]["counters"].get("access_log_lost", 0)

    wait_for(lambda: lost() >= 600, 5, "the lost entries counted")
    assert "access log entries cannot be written" in stack.balancer.output()


def test_no_access_log(start_stack):
    stack = start_stack(workers=1, args=("--no-access-log",))
    rid = fetch(stack.port, "/pid").headers["x-request-id"]
    time.sleep(0.3)
    assert rid not in stack.balancer.output()


def test_control_join_drain_leave(start_stack, short_tmp):
    mark = short_tmp / "taken"
    stack = start_stack(workers=2)
    first, second = stack.workers
    status, reply = control(stack.control, "leave", {"id": "2"})
    assert status == 200 and reply["data"]["id"] == "2"
    assert {fetch(stack.port, "/pid").headers["x-pid"] for _ in range(3)} == {str(first.pid)}
    status, reply = control(stack.control, "join", {"id": "2", "socket": second.socket_path})
    assert status == 200 and reply["data"]["state"] == "ready"
    # Drain the worker serving a slow request: the reply waits for it to finish.
    start = time.monotonic()
    slow_conn = tcp(stack.port)
    slow_conn.request("GET", f"/slow?ms=800&mark={mark}")
    wait_for(mark.exists)
    _, pool = control(stack.control, "pool")
    busy_id = next(w["id"] for w in pool["data"] if w["state"] == "busy")
    status, reply = control(stack.control, "drain", {"id": busy_id})
    assert status == 200 and reply["data"]["state"] == "drained"
    assert time.monotonic() - start >= 0.7
    assert slow_conn.getresponse().status == 200
    other = stack.workers[1 - (int(busy_id) - 1)]
    assert {fetch(stack.port, "/pid").headers["x-pid"] for _ in range(4)} == {str(other.pid)}
    _, pool = control(stack.control, "pool")
    assert {w["id"]: w["state"] for w in pool["data"]}[busy_id] == "drained"


@pytest.mark.parametrize(
    ("command", "body", "status", "code"),
    [
        ("frobnicate", {}, 404, "unknown-command"),
        ("join", {"id": "3"}, 400, "bad-request"),
        ("join", {"id": "", "socket": "/x"}, 400, "bad-request"),
        ("leave", {"id": "nope"}, 404, "unknown-worker"),
        ("drain", {"id": "1", "timeout": "soon"}, 400, "bad-request"),
    ],
)
def test_control_bad_messages_get_error_replies(start_stack, command, body, status, code):
    stack = start_stack(workers=1)
    got_status, reply = control(stack.control, command, body)
    assert (got_status, reply["ok"], reply["error"]["code"]) == (status, False, code)
    assert reply["error"]["message"]
    assert fetch(stack.port, "/pid").status == 200


def test_control_rejects_non_json_and_keeps_serving(start_stack):
    from tests.support.client import UnixHTTPConnection

    stack = start_stack(workers=1)
    conn = UnixHTTPConnection(stack.control)
    conn.request("POST", "/join", body=b"{not json", headers={"Content-Type": "text/plain"})
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    assert resp.status == 400 and reply["error"]["code"] == "bad-json"
    with socket.socket(socket.AF_UNIX) as sock:  # a client that vanishes mid-request
        sock.connect(stack.control)
        sock.sendall(b"POST /join HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    assert control(stack.control, "pool")[0] == 200
    assert fetch(stack.port, "/pid").status == 200
    mode = __import__("os").stat(stack.control).st_mode & 0o777
    assert mode in (0o600, 0o660)


def test_slow_body_gets_408(start_stack):
    stack = start_stack(workers=1, args=("--body-timeout", "0.5"))
    start = time.monotonic()
    reply = raw_tcp(stack.port, b"POST /echo HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Length: 10\r\n\r\nabc")
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("upgrade", ["foo", "websocket"])
def test_slow_body_of_an_upgrade_request_gets_408(start_stack, upgrade):
    """The body of a request asking for an upgrade is read by its length after the parser
    stops: it had no clock, and a client that never sent it held its connection for good."""
    stack = start_stack(workers=1, args=("--body-timeout", "0.5"))
    start = time.monotonic()
    reply = raw_tcp(stack.port, b"POST /echo HTTP/1.1\r\nHost: localhost\r\n"
                    b"Connection: Upgrade\r\nUpgrade: %s\r\n"
                    b"Content-Length: 10\r\n\r\nabc" % upgrade.encode())
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert time.monotonic() - start < 2


def test_sigterm_finishes_requests_in_flight_then_exits(start_stack, short_tmp):
    import signal
    import threading

    stack = start_stack(workers=1)
    idle = tcp(stack.port)
    assert request(idle, "GET", "/pid").status == 200
    result = {}
    mark = short_tmp / "taken"
    thread = threading.Thread(
        target=lambda: result.update(r=fetch(stack.port, f"/slow?ms=800&mark={mark}")))
    thread.start()
    wait_for(mark.exists)
    stack.balancer.signal(signal.SIGTERM)
    thread.join(10)
    assert result["r"].status == 200
    assert stack.balancer.wait_exit() == 0
    assert stack.balancer.notify.fields("STOPPING") == ["1"]
    assert idle.sock.recv(1) == b""  # the idle keep-alive connection was closed


def test_trusted_proxy_keeps_request_id_and_forwarded_chain(start_stack):
    stack = start_stack(workers=1, args=("--forwarded-allow-ips", "127.0.0.0/8,::1"))
    reply = fetch(stack.port, "/headers", headers={
        "X-Request-Id": "edge-42", "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"})
    seen = json.loads(reply.body)
    assert reply.headers["x-request-id"] == "edge-42" == seen["x-request-id"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "shop.example"


def test_bad_forwarded_allow_ips_is_a_usage_error(short_tmp):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ripsvc.balancer", "--forwarded-allow-ips",
                             "10.0.0.0/8,not-an-ip"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "'not-an-ip' is not an IP address or CIDR network" in result.stderr


def test_new_version_workers_are_preferred(start_stack, short_tmp):
    stack = start_stack(workers=2)
    old, new = stack.workers
    control(stack.control, "leave", {"id": "1"})
    control(stack.control, "leave", {"id": "2"})
    control(stack.control, "join", {"id": "1", "socket": old.socket_path, "version": "1"})
    control(stack.control, "join", {"id": "2", "socket": new.socket_path, "version": "2"})
    conn = tcp(stack.port)
    served = {request(conn, "GET", "/pid").headers["x-pid"] for _ in range(6)}
    assert served == {str(new.pid)}  # sequential requests: the new worker is always idle
    mark = short_tmp / "taken"
    slow = tcp(stack.port)
    slow.request("GET", f"/slow?ms=600&mark={mark}")
    wait_for(mark.exists)
    assert fetch(stack.port, "/pid").headers["x-pid"] == str(old.pid)  # capacity still used
    assert slow.getresponse().status == 200


def test_x_request_start_tells_the_app_when_its_request_arrived(start_stack):
    """(issue 22) X-Request-Start: t=<microseconds since the epoch>, the format APM agents
    read; a trusted proxy's own value is kept, anyone else's replaced."""
    stack = start_stack(workers=1, args=("--forwarded-allow-ips", "127.0.0.1"))
    before = time.time()
    seen = json.loads(fetch(stack.port, "/headers").body)
    after = time.time()
    start = seen["x-request-start"]
    assert start.startswith("t=") and before - 0.01 <= int(start[2:]) / 1e6 <= after
    seen = json.loads(fetch(stack.port, "/headers", headers={
        "X-Request-Start": "t=1700000000000000"}).body)
    assert seen["x-request-start"] == "t=1700000000000000"  # from 127.0.0.1: trusted
    other = start_stack(workers=1)
    seen = json.loads(fetch(other.port, "/headers", headers={
        "X-Request-Start": "t=1700000000000000"}).body)
    assert seen["x-request-start"] != "t=1700000000000000"


def test_the_access_log_splits_the_time_waited_from_the_worker_s(start_stack, short_tmp):
    """(issue 22) queue_ms and worker_ms beside duration_ms: a request that waited behind a
    slow one shows its wait."""
    out = short_tmp / "access.json"
    stack = start_stack(workers=1, args=("--json-logging",), stdout=str(out))
    slow = threading.Thread(target=fetch, args=(stack.port, "/slow?ms=400"))
    slow.start()
    time.sleep(0.1)
    waited = fetch(stack.port, "/pid")
    slow.join(10)
    rid = waited.headers["x-request-id"]
    wait_for(lambda: rid in out.read_text(), what="the access log line")
    entry = next(json.loads(line) for line in out.read_text().splitlines() if rid in line)
    assert entry["queue_ms"] >= 200 and entry["worker_ms"] < 100
    assert entry["duration_ms"] >= entry["queue_ms"] + entry["worker_ms"] - 1
