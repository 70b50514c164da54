"""ASGI conformance of the worker: what the spec (and uvicorn) allows an app to send, the
lifespan of apps that do not support it, scope["server"] and header names with underscores.

Every answer is compared byte for byte (its Date apart), so that running this file against
the interpreted package (RIP_MYPYC=0) checks that both builds answer alike: a declared type
in a compiled module is enforced at run time, where the interpreted build lets it pass.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.support.client import UnixHTTPConnection, get, raw, request
from tests.support.procs import TEST_APPS

SHAPES = str(TEST_APPS / "asgi_shapes.py")


def exchange(socket_path: str, path: str, headers: str = "") -> bytes:
    """The worker's whole answer to one GET, its Date field taken out."""
    data = raw(socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}"
                            "Connection: close\r\n\r\n".encode())
    return re.sub(rb"date: [^\r]*\r\n", b"", data)


def scope_seen(socket_path: str, headers: str = "") -> dict[str, object]:
    head, _, body = exchange(socket_path, "/scope", headers).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    seen: dict[str, object] = json.loads(body)
    return seen


def test_an_app_that_returns_for_scopes_it_does_not_handle_is_served(start_worker):
    # `if scope["type"] != "http": return`: no lifespan, as uvicorn and hypercorn take it.
    worker = start_worker(SHAPES)
    assert exchange(worker.socket_path, "/list-headers").startswith(b"HTTP/1.1 200 OK")
    assert "lifespan" not in worker.output()  # not worth a word at the default log level
    worker.signal()
    assert worker.wait_exit() == 0


def test_a_lifespan_that_takes_startup_and_returns_is_served_with_a_warning(start_worker):
    worker = start_worker(f"{SHAPES}:took_startup")
    assert exchange(worker.socket_path, "/list-headers").startswith(b"HTTP/1.1 200 OK")
    assert "returned without answering 'lifespan.startup'" in worker.output()
    worker.signal()
    assert worker.wait_exit() == 0


RESPONSES = {
    # The spec's own notation for headers (a list of lists), a tuple of tuples.
    "/list-headers": b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-type: text/plain\r\n"
                     b"content-length: 5\r\nconnection: close\r\n\r\nlist\n",
    "/tuple-headers": b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-type: text/plain\r\n"
                      b"content-length: 6\r\nconnection: close\r\n\r\ntuple\n",
    # Bytes-like bodies and header values: all their bytes are sent and counted (uvicorn
    # counts the 6 items of a memoryview of 2-byte items, and frames 12 bytes as 6).
    "/bytearray": b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 10\r\nconnection: close\r\n"
                  b"\r\nbytearray\n",
    "/memoryview": b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 12\r\nconnection: close\r\n"
                   b"\r\nmemoryview\n\n",
    "/pieces": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
               b"4\r\none \r\n4\r\ntwo\n\r\n0\r\n\r\n",
    "/more-body-int": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
                      b"\r\n4\r\none \r\n4\r\ntwo\n\r\n0\r\n\r\n",
    # Started, then returned without a body message: complete, with an empty body.
    "/start-only": b"HTTP/1.1 204 No Content\r\nx-a: 1\r\nconnection: close\r\n\r\n",
    "/start-only-200": b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n"
                       b"connection: close\r\n\r\n",
    # ... unless it promised a body it never sent: nothing went out yet, so a 500 (uvicorn
    # sends the head, then closes: a response that looks complete up to its body).
    "/start-only-promise": b"HTTP/1.1 500 Internal Server Error\r\n",
    # What the spec does not allow: refused alike by the compiled and the interpreted build.
    "/str-body": b"HTTP/1.1 500 Internal Server Error\r\n",
    "/str-header": b"HTTP/1.1 500 Internal Server Error\r\n",
}


@pytest.mark.parametrize("path", RESPONSES)
def test_what_an_app_may_send(start_worker, path):
    worker = start_worker(SHAPES)
    answer = exchange(worker.socket_path, path)
    if answer.startswith(b"HTTP/1.1 500"):
        assert answer.startswith(RESPONSES[path]), answer
    else:
        assert answer == RESPONSES[path]


def test_messages_may_be_any_mapping(start_worker):
    # The spec says dict; a dict's type, declared in compiled code, would have refused others
    # where the interpreted build took them.
    worker = start_worker(f"{SHAPES}:mappings")
    assert exchange(worker.socket_path, "/") == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 8\r\nconnection: close\r\n\r\nmapping\n")
    worker.signal()
    assert worker.wait_exit() == 0


@pytest.mark.parametrize(("path", "error"), [
    ("/str-body", "TypeError: http.response.body's body must be bytes-like, not str"),
    ("/str-header", "TypeError: a header value must be bytes-like, not str"),
    # An interim status would leave the client taking the next response for this one's.
    ("/status-100", "ValueError: the app's response status 100 is not a final status"),
    ("/status-103", "ValueError: the app's response status 103 is not a final status"),
    ("/status-600", "ValueError: the app's response status 600 is not a final status"),
])
def test_what_the_spec_does_not_allow_is_a_500_that_says_why(start_worker, path, error):
    worker = start_worker(SHAPES)
    assert get(worker.socket_path, path).status == 500
    assert error in worker.wait_output(error)


def test_a_response_started_and_never_sent_keeps_the_connection(start_worker):
    worker = start_worker(SHAPES)
    conn = UnixHTTPConnection(worker.socket_path)
    conn.connect()
    first_socket = conn.sock
    reply = request(conn, "GET", "/start-only")
    assert (reply.status, reply.headers["x-a"], reply.body) == (204, "1", b"")
    reply = request(conn, "GET", "/start-only-200")
    assert (reply.status, reply.body) == (200, b"")
    assert request(conn, "GET", "/pieces").body == b"one two\n"
    assert conn.sock is first_socket
    assert "/start-only-200: the app returned after http.response.start 200" in worker.output()
    assert "/start-only:" not in worker.output()  # a 204 has no body to miss


@pytest.mark.parametrize(("header", "server"), [
    ("rip-server: 127.0.0.1:8080", ["127.0.0.1", 8080]),
    ("rip-server: [2001:db8::1]:443", ["2001:db8::1", 443]),
])
def test_scope_server_is_where_the_client_connected_to_the_balancer(start_worker, header,
                                                                    server):
    worker = start_worker(SHAPES)
    seen = scope_seen(worker.socket_path, f"rip-client: 203.0.113.7:5000\r\n{header}\r\n")
    assert seen["server"] == server
    assert seen["client"] == ["203.0.113.7", 5000]
    assert seen["headers"] == ["host", "connection"]  # Rip-* are the worker's own


def test_scope_server_without_the_balancer_is_the_unix_socket(start_worker):
    # [path, None], as the spec has it for a Unix socket and uvicorn gives.
    worker = start_worker(SHAPES)
    assert scope_seen(worker.socket_path)["server"] == [worker.socket_path, None]
    seen = scope_seen(worker.socket_path, "rip-server: not an address\r\n")
    assert seen["server"] == [worker.socket_path, None]


def test_header_names_with_underscores_do_not_reach_the_app(start_worker):
    worker = start_worker(SHAPES)
    seen = scope_seen(worker.socket_path, "X_Auth_User: evil\r\nX-Auth-User: good\r\n")
    assert seen["headers"] == ["host", "x-auth-user", "connection"]


# -- real apps -----------------------------------------------------------------------------------

BEHIND_BALANCER = {"rip-client": "203.0.113.7:5000", "rip-server": "192.0.2.1:8443",
                   "X-Forwarded-Proto": "https", "X_Auth_User": "evil",
                   "X-Auth-User": "good"}


def test_fastapi_memoryview_body_and_what_starlette_sees(start_worker):
    worker = start_worker(str(TEST_APPS / "fastapi_app.py"))
    reply = get(worker.socket_path, "/memoryview")
    assert (reply.status, reply.body) == (200, b"from a memoryview\n")
    assert reply.headers["content-length"] == "18"
    seen = json.loads(get(worker.socket_path, "/seen", headers={
        "Host": "example.org", **BEHIND_BALANCER}).body)
    assert seen == {"url": "https://example.org/seen", "server": ["192.0.2.1", 8443],
                    "client": "203.0.113.7", "auth_user": "good", "started": True,
                    "header_names": ["accept-encoding", "host", "x-auth-user",
                                     "x-forwarded-proto"]}


def test_django_under_asgi_is_served_and_cannot_be_spoofed(start_worker):
    # Django's ASGI handler raises on the lifespan scope (an app without lifespan) and reads
    # SERVER_NAME/SERVER_PORT from scope["server"] (else "unknown" and "0"). It maps header
    # names to META as WSGI does; recent versions skip names with an underscore themselves.
    worker = start_worker(str(TEST_APPS / "django_site" / "asgi.py") + ":application")
    seen = json.loads(get(worker.socket_path, "/seen", headers={
        "Host": "example.org", **BEHIND_BALANCER}).body)
    assert seen == {"SERVER_NAME": "192.0.2.1", "SERVER_PORT": "8443",
                    "REMOTE_ADDR": "203.0.113.7", "host": "example.org",
                    "url": "https://example.org/seen", "auth_user": "good"}
