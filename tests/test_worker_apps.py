"""The three app kinds through a real worker process: requests, bodies, keep-alive, lifecycle."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.client import UnixHTTPConnection, get, raw, read_all, request
from tests.support.procs import EXAMPLES, TEST_APPS

KINDS = {
    "asgi": str(EXAMPLES / "hello"),
    "wsgi": str(EXAMPLES / "hello_wsgi"),
    "aiohttp": str(EXAMPLES / "hello_aiohttp"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_ping_and_echo(start_worker, kind):
    worker = start_worker(KINDS[kind])
    reply = get(worker.socket_path, "/ping")
    assert reply.status == 200
    assert reply.text.startswith("pong ")
    assert "date" in reply.headers
    conn = UnixHTTPConnection(worker.socket_path)
    body = bytes(range(256)) * 1000
    reply = request(conn, "POST", "/echo", body=body)
    assert reply.status == 200
    assert reply.body == body
    assert reply.headers["x-body-length"] == str(len(body))
    assert f"({kind})" in worker.output()


@pytest.mark.parametrize("kind", KINDS)
def test_keep_alive_serves_many_requests_on_one_connection(start_worker, kind):
    worker = start_worker(KINDS[kind])
    conn = UnixHTTPConnection(worker.socket_path)
    conn.connect()
    first_socket = conn.sock
    for i in range(50):
        reply = request(conn, "POST", "/echo", body=b"request %d" % i)
        assert (reply.status, reply.body) == (200, b"request %d" % i)
    assert conn.sock is first_socket, "the worker closed a keep-alive connection"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_pipelined_requests_are_answered_in_order(start_worker, kind):
    worker = start_worker(KINDS[kind])
    requests = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in (b"first", b"second", b"third")
    )
    data = raw(worker.socket_path, requests + b"GET /ping HTTP/1.1\r\nHost: x\r\n"
               b"Connection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200 OK") == 4
    assert data.index(b"first") < data.index(b"second") < data.index(b"third") < data.index(b"pong")


def test_wsgi_errors_exc_info_back_pressure_and_close(start_worker):
    worker = start_worker(str(TEST_APPS / "wsgi_cases.py"))
    sock = worker.socket_path
    assert get(sock, "/raise").status == 500
    assert get(sock, "/no-start").status == 500
    assert "returned without calling start_response" in worker.output()
    # The first piece went out: only closing can tell the client, mid-body.
    data = raw(sock, b"GET /raise-late HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and b"first piece" in data
    assert not data.endswith(b"0\r\n\r\n")  # no last chunk: the body is cut short
    error = get(sock, "/exc-info")
    assert (error.status, error.body) == (500, b"an error page\n")
    # 16 MiB streamed to a client that starts reading late: the app waits for the socket.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(sock)
        client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)
        data = read_all(client)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    pieces = [p for i, p in enumerate(body.split(b"\r\n")) if i % 2]
    assert b"".join(pieces) == b"".join(b"%08d" % i * 8192 for i in range(256))
    assert get(sock, "/closing").body == b"one two\n"
    assert get(sock, "/count").body == b"closed 1\n"


def test_http10_closes_after_response(start_worker):
    worker = start_worker(KINDS["asgi"])
    data = raw(worker.socket_path, b"GET /ping HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data.lower()


def test_wsgi_environ_stream_and_file_wrapper(start_worker):
    worker = start_worker(KINDS["wsgi"])
    environ = get(worker.socket_path, "/environ?a=1", headers={"Host": "example.org:8080"}).text
    for line in ("REQUEST_METHOD=GET", "PATH_INFO=/environ", "QUERY_STRING=a=1",
                 "SERVER_NAME=example.org", "SERVER_PORT=8080", "SERVER_PROTOCOL=HTTP/1.1",
                 "wsgi.url_scheme=http", "wsgi.multiprocess=True", "wsgi.errors=True"):
        assert line in environ.splitlines()
    stream = get(worker.socket_path, "/stream")
    assert stream.headers.get("transfer-encoding") == "chunked"
    assert stream.body == b"piece 0\npiece 1\npiece 2\n"
    source = (EXAMPLES / "hello_wsgi" / "app.py").read_bytes()
    assert get(worker.socket_path, "/file").body == source


def test_aiohttp_startup_and_cleanup_signals_run(start_worker):
    worker = start_worker(KINDS["aiohttp"])
    assert get(worker.socket_path, "/started").text == "startup signal ran\n"
    worker.signal()
    assert worker.wait_exit() == 0
    assert "cleanup signal ran" in worker.output()


def test_asgi_lifespan_runs_startup_before_ready_and_shutdown_on_stop(start_worker):
    worker = start_worker(str(TEST_APPS / "lifespan_app.py"), ready=False)
    worker.wait_ready()
    out = worker.output()
    assert "startup begins" in out and "startup done" in out
    assert get(worker.socket_path, "/").text == "state: started\n"
    worker.signal()
    assert worker.wait_exit() == 0
    assert "shutdown ran" in worker.output()


def test_app_errors_become_500_and_the_worker_goes_on(start_worker):
    worker = start_worker(str(TEST_APPS / "errors_app.py"))
    reply = get(worker.socket_path, "/raise")
    assert reply.status == 500
    assert "ZeroDivisionError" in worker.wait_output("ZeroDivisionError")
    assert get(worker.socket_path, "/ok").status == 200


def test_malformed_request_gets_400_and_close(start_worker):
    worker = start_worker(KINDS["asgi"])
    data = raw(worker.socket_path, b"GET /ping HTTP/1.1\r\nHost x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in data
    assert get(worker.socket_path, "/ping").status == 200


def test_oversized_header_section_gets_431(start_worker):
    worker = start_worker(KINDS["asgi"])
    data = raw(worker.socket_path,
               b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert get(worker.socket_path, "/ping").status == 200


@pytest.mark.parametrize("attr", ["app", "wsgi"])
@pytest.mark.parametrize("path", ["/value", "/nul", "/name"])
def test_a_header_field_that_would_split_the_response_gets_500(start_worker, attr, path):
    worker = start_worker(f"{TEST_APPS / 'bad_headers.py'}:{attr}")
    data = raw(worker.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), data
    assert b"x-injected" not in data and b"x note" not in data
    assert "from the app" in worker.wait_output("ValueError: invalid header field")
    assert get(worker.socket_path, "/ok").headers["x-note"] == "fine"
