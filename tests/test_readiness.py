"""Readiness, liveness, the app's drain state, shutdown_delay and HAProxy's agent-check, on a
real balancer in front of real workers (the manager's side: tests/test_drain.py)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

from tests.support.client import control, fetch, tcp
from tests.support.waiting import free_port, wait_for


def agent_line(port: int, send: bytes = b"", timeout: float = 5.0) -> bytes:
    """What the agent port answers, as HAProxy reads it: everything until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if send:
            sock.sendall(send)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_readiness_fails_while_draining_liveness_never_waits(start_stack, short_tmp):
    """/ready and /server are answered by the balancer at once, even with every worker busy
    and requests queued; a drained app fails readiness and still serves what arrives."""
    stack = start_stack(workers=1, args=("--ready-path", "/readyz"))
    assert fetch(stack.port, "/readyz").status == 200
    mark = short_tmp / "busy"
    slow = tcp(stack.port)
    slow.request("GET", f"/slow?ms=1500&mark={mark}")
    wait_for(mark.exists)
    queued = tcp(stack.port)
    queued.request("GET", "/pid")  # waits for the only worker
    for path, code, body in (("/readyz", 200, b"ready\n"), ("/server", 200, b"ok\n")):
        reply = fetch(stack.port, path)
        assert (reply.status, reply.body) == (code, body)
        assert reply.seconds < 0.5, (path, reply.seconds)
    status, reply = control(stack.control, "drain-app", {"draining": True})
    assert status == 200 and reply["data"]["draining"] is True
    ready = fetch(stack.port, "/readyz")
    assert (ready.status, ready.body) == (503, b"503 draining\n")
    assert fetch(stack.port, "/server").status == 200  # alive: nothing to restart
    assert json.loads(fetch(stack.port, "/status").body)["draining"] == "drained"
    # Everything that arrives is still served: the requests in flight and new ones.
    assert slow.getresponse().status == 200
    assert queued.getresponse().status == 200
    assert fetch(stack.port, "/pid").status == 200
    status, reply = control(stack.control, "drain-app", {"draining": False})
    assert status == 200 and reply["data"]["draining"] is False
    assert fetch(stack.port, "/readyz").status == 200
    # Bad input gets a clear error and changes nothing.
    status, reply = control(stack.control, "drain-app", {"draining": "yes"})
    assert status == 400 and reply["error"]["code"] == "bad-request"
    assert fetch(stack.port, "/readyz").status == 200


def test_readiness_fails_with_no_worker_in_rotation(start_stack):
    stack = start_stack(workers=1)
    assert fetch(stack.port, "/ready").status == 200
    control(stack.control, "leave", {"id": "1"})
    reply = fetch(stack.port, "/ready")
    assert (reply.status, reply.body) == (503, b"503 no worker ready\n")
    assert fetch(stack.port, "/server").status == 200


def test_agent_check_reports_weight_drain_and_down(start_stack, short_tmp):
    agent = free_port()
    stack = start_stack(workers=2, args=("--agent-port", str(agent)))
    assert agent_line(agent) == b"up ready 100%\n"
    # HAProxy's agent-send: a line first; the answer is the same.
    assert agent_line(agent, b"backend/rip1\n") == b"up ready 100%\n"
    # Both workers busy and requests queued for a while: the weight goes down.
    conns = []
    for n in range(6):
        conn = tcp(stack.port)
        conn.request("GET", f"/slow?ms=2500&tag={n}")
        conns.append(conn)
    time.sleep(1.5)
    line = agent_line(agent)
    assert line.startswith(b"up ready ") and line.endswith(b"%\n"), line
    assert int(line[9:-2]) <= 30, line
    control(stack.control, "drain-app", {"draining": True})
    assert agent_line(agent) == b"up drain\n"
    for conn in conns:
        assert conn.getresponse().status == 200  # a drained app serves what it has
    for worker_id in ("1", "2"):
        control(stack.control, "leave", {"id": worker_id})
    assert agent_line(agent) == b"down drain #no worker ready\n"
    control(stack.control, "drain-app", {"draining": False})
    assert agent_line(agent) == b"down ready #no worker ready\n"
    control(stack.control, "join", {"id": "1", "socket": stack.workers[0].socket_path})
    wait_for(lambda: agent_line(agent).startswith(b"up ready "), 5, "the agent back up")


def test_agent_port_survives_floods_half_sent_and_endless_input(start_stack):
    """A peer that sends half a line, one that never stops sending, and hundreds of
    connections held open: each costs a bounded amount, the answers go on, and so does
    the app."""
    agent = free_port()
    stack = start_stack(workers=1, args=("--agent-port", str(agent)))
    assert agent_line(agent, b"half a li") == b"up ready 100%\n"
    # Endless input: cut off (the answer was sent first).
    with socket.create_connection(("127.0.0.1", agent), timeout=5) as sock:
        cut = False
        try:
            for _ in range(1000):
                sock.sendall(b"x" * 4096)
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            cut = True
        assert cut, "4 MB sent to the agent port and never cut off"
    # A flood of connections that are held open: the agent keeps a bounded number.
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            held.append(socket.create_connection(("127.0.0.1", agent), timeout=5))
        assert fetch(stack.port, "/pid").status == 200  # the app does not notice
        # Held connections are cut LINGER (2 s) after they opened; then checks pass again.
        time.sleep(2.5)
        assert agent_line(agent) == b"up ready 100%\n"
    finally:
        for sock in held:
            sock.close()
    _, stats = control(stack.control, "stats")
    counters = stats["data"]["counters"]
    assert counters["agent_refused"] > 0 and counters["agent_checks"] > 0, counters
    assert stack.balancer.proc.poll() is None


def test_agent_port_that_cannot_be_had_leaves_the_app_serving(start_stack):
    """The agent must never be what keeps the app down: the port is taken, the error is
    logged, the app serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack = start_stack(workers=1, args=("--agent-port", str(port)))
        assert fetch(stack.port, "/ready").status == 200
        wait_for(lambda: "cannot listen" in stack.balancer.output(), 5, "the error logged")
        assert f"agent_port 127.0.0.1:{port}" in stack.balancer.output()


def test_shutdown_delay_fails_readiness_and_serves_before_stopping(start_stack):
    agent = free_port()
    stack = start_stack(workers=1, args=("--shutdown-delay", "1.5", "--agent-port", str(agent)))
    balancer = stack.balancer
    sent = time.monotonic()
    balancer.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: fetch(stack.port, "/ready").status == 503, 1, "readiness failing")
    assert fetch(stack.port, "/ready").body == b"503 draining\n"
    assert agent_line(agent) == b"up drain\n"
    served = 0
    while time.monotonic() - sent < 1.2:  # a load balancer still sending meanwhile
        assert fetch(stack.port, "/pid").status == 200
        served += 1
    assert served > 5
    assert balancer.wait_exit(10) == 0
    assert time.monotonic() - sent >= 1.4
    assert "stopping in 1.5 s (shutdown_delay)" in balancer.output()


def test_a_second_sigterm_ends_the_shutdown_delay(start_stack):
    stack = start_stack(workers=1, args=("--shutdown-delay", "30"))
    balancer = stack.balancer
    sent = time.monotonic()
    balancer.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: fetch(stack.port, "/ready").status == 503, 1, "readiness failing")
    balancer.proc.send_signal(signal.SIGTERM)
    assert balancer.wait_exit(10) == 0
    assert time.monotonic() - sent < 5


def test_time_already_drained_counts_toward_the_shutdown_delay(start_stack):
    stack = start_stack(workers=1, args=("--shutdown-delay", "1.5"))
    control(stack.control, "drain-app", {"draining": True})
    time.sleep(1.6)
    sent = time.monotonic()
    stack.balancer.proc.send_signal(signal.SIGTERM)
    assert stack.balancer.wait_exit(10) == 0
    assert time.monotonic() - sent < 1.0


def test_readiness_is_answered_under_load(start_stack):
    """A load balancer's check is never queued behind busy workers."""
    stack = start_stack(workers=1)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            fetch(stack.port, "/slow?ms=200")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        worst = max(fetch(stack.port, "/ready").seconds for _ in range(10))
        assert worst < 0.3, worst  # a queued request would wait 200 ms per one ahead
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
