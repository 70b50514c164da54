"""Streaming with real frameworks (FastAPI/Starlette, Flask), compared with what uvicorn and
gunicorn do for the same request where behaviour is a choice: a stream that fails midway."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.client import Raw, read_responses
from tests.support.procs import REPO, TEST_APPS
from tests.support.waiting import free_port, port_open, wait_for
from tests.test_availability import healed

ASGI = str(TEST_APPS / "stream_asgi.py") + ":app"
WSGI = str(TEST_APPS / "stream_wsgi.py") + ":app"


def ask(port: int, path: str) -> tuple[Raw, bool]:
    """One GET on a fresh connection: the response, and whether the connection was closed
    right after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode())
        replies = read_responses(sock, ["GET"], timeout=10)
        sock.settimeout(2)
        try:
            closed = sock.recv(100) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
    assert len(replies) == 1, replies
    return replies[0], closed


class Reference:
    """uvicorn or gunicorn serving a test app on a loopback port."""

    def __init__(self, server: str, app: str) -> None:
        self.port = free_port()
        module = Path(app.partition(":")[0]).stem
        argv = ([sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(self.port),
                 "--log-level", "warning"] if server == "uvicorn" else
                [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", "-w", "1",
                 f"{module}:app"])
        self.proc = subprocess.Popen(argv, cwd=str(TEST_APPS), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), timeout=20, what=f"{server} to listen")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_fastapi_sse_arrives_event_by_event(start_stack):
    stack = start_stack(workers=1, app=ASGI)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        start = time.monotonic()
        received = b""
        while b"event 0" not in received:
            received += sock.recv(65536)
        first = time.monotonic() - start
        while b"event 4" not in received:
            received += sock.recv(65536)
        last = time.monotonic() - start
    assert first < 0.15 and last >= 0.2, (first, last)  # as sent, not all at the end
    healed(stack.port, 1, path="/sse")


def test_fastapi_sees_the_client_leave_while_it_polls(start_stack, short_tmp):
    stack = start_stack(workers=1, app=ASGI)
    seen = short_tmp / "gone"
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.sendall(b"GET /poll?file=%s HTTP/1.1\r\nHost: localhost\r\n\r\n" % str(seen).encode())
    time.sleep(0.3)
    sock.close()
    wait_for(seen.exists, timeout=1.0, what="FastAPI to see its client leave")
    healed(stack.port, 1, timeout=3, path="/sse")


def test_flask_streams_piece_by_piece(start_stack):
    stack = start_stack(workers=1, app=WSGI)
    reply, _ = ask(stack.port, "/stream")
    assert reply.complete and reply.body == b"".join(b"piece %d\n" % n for n in range(5))
    assert reply.header("transfer-encoding") == "chunked"
    healed(stack.port, 1, path="/stream")


@pytest.mark.parametrize(("app", "reference"), [(ASGI, "uvicorn"), (WSGI, "gunicorn")])
def test_a_stream_that_fails_midway_ends_as_under_the_usual_server(start_stack, app,
                                                                    reference):
    """What the client gets: the status, the piece sent before the failure, a body cut short
    (no last chunk), the connection closed, and no second response; the worker keeps
    serving."""
    server = Reference(reference, app)
    try:
        theirs, their_close = ask(server.port, "/fail-stream")
    finally:
        server.close()
    stack = start_stack(workers=1, app=app)
    ours, our_close = ask(stack.port, "/fail-stream")
    assert (ours.status, ours.body, ours.complete, our_close) == \
        (theirs.status, theirs.body, theirs.complete, their_close)
    assert (ours.status, ours.body, ours.complete, our_close) == (200, b"first piece\n", False,
                                                                   True)
    healed(stack.port, 1, path="/sse" if app == ASGI else "/stream")


def test_the_reference_servers_are_the_ones_installed() -> None:
    """(The comparison above runs the uvicorn and gunicorn of this environment: PyPI's in
    .venv, Debian 12's in .venv-debian.)"""
    for module in ("uvicorn", "gunicorn"):
        found = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"],
                               capture_output=True, text=True, cwd=str(REPO))
        assert found.returncode == 0, found.stderr
