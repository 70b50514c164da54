"""WSGI conformance of the worker, against what gunicorn does: the callables it loads,
SERVER_NAME/SERVER_PORT, header names with underscores, and what start_response, write() and
the body may be given (alike in the compiled and the interpreted build).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.support.client import get, raw
from tests.support.procs import TEST_APPS

SHAPES = str(TEST_APPS / "wsgi_shapes.py")


def environ_seen(socket_path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    reply = get(socket_path, "/", headers=headers or {})
    assert reply.status == 200, reply
    seen: dict[str, object] = json.loads(reply.body)
    return seen


# wsgiref's validator checks the server's side of PEP 3333 too (environ, start_response,
# write, close): its AssertionError would be a 500.
@pytest.mark.parametrize("attr", ["validated", "wrapped", "with_exc_info", "partial", "instance",
                                  "AppClass"])
def test_callables_gunicorn_serves_are_served(start_worker, attr):
    worker = start_worker(f"{SHAPES}:{attr}")
    seen = environ_seen(worker.socket_path, {"Host": "example.org"})
    assert seen["HTTP_HOST"] == "example.org"
    assert "(wsgi)" in worker.output()
    assert "Error" not in worker.output()


@pytest.mark.parametrize(("rip_server", "name", "port"), [
    ("127.0.0.1:8080", "127.0.0.1", "8080"),
    ("[2001:db8::1]:443", "2001:db8::1", "443"),
])
def test_server_name_and_port_are_where_the_client_connected(start_worker, rip_server, name,
                                                             port):
    # gunicorn: the listening socket's address, whatever the Host header says.
    worker = start_worker(SHAPES)
    seen = environ_seen(worker.socket_path, {"Host": "attacker.example:1234",
                                             "rip-server": rip_server,
                                             "rip-client": "203.0.113.7:5000"})
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == (name, port)
    assert (seen["HTTP_HOST"], seen["REMOTE_ADDR"]) == ("attacker.example:1234", "203.0.113.7")
    assert "HTTP_RIP_SERVER" not in seen["headers"]


@pytest.mark.parametrize(("request_head", "name", "port"), [
    (b"Host: example.org:8080\r\n", "example.org", "8080"),
    (b"Host: example.org\r\n", "example.org", "80"),
    (b"Host: example.org\r\nX-Forwarded-Proto: https\r\n", "example.org", "443"),
    (b"Host: [::1]:8080\r\n", "[::1]", "8080"),  # gunicorn makes "[" and "" of it
    (b"", None, "80"),  # gunicorn: the socket's path, and an empty port (PEP 3333: never)
])
def test_server_name_without_the_balancer_follows_gunicorn_on_a_unix_socket(
        start_worker, request_head, name, port):
    worker = start_worker(SHAPES)
    data = raw(worker.socket_path, b"GET / HTTP/1.0\r\n" + request_head + b"\r\n")
    seen = json.loads(data.partition(b"\r\n\r\n")[2])
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == (name or worker.socket_path, port)


def test_header_names_with_underscores_are_dropped_not_merged(start_worker):
    # gunicorn's header_map=drop, nginx's underscores_in_headers off: else X_Auth_User from
    # the client lands in the same HTTP_X_AUTH_USER as an authenticating proxy's X-Auth-User.
    worker = start_worker(SHAPES)
    seen = environ_seen(worker.socket_path, {"X_Auth_User": "evil", "X-Auth-User": "good",
                                             "Only_Underscore": "1"})
    assert seen["HTTP_X_AUTH_USER"] == "good"
    assert seen["headers"] == ["HTTP_ACCEPT_ENCODING", "HTTP_HOST", "HTTP_X_AUTH_USER"]


RESPONSES = {
    "/tuple-headers": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 6\r\n"
                      b"connection: close\r\n\r\ntuple\n",
    "/list-headers": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n"
                     b"connection: close\r\n\r\nlist\n",
    # An iterator over a list is a body in memory too (Django's HttpResponse is one).
    "/bytes-like": b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n"
                   b"one two\n",
    # The app runs on the worker's loop thread, which it must not see running (worker/wsgi.py).
    "/asyncio": b"HTTP/1.1 200 OK\r\ncontent-length: 26\r\nconnection: close\r\n\r\n"
                b"asyncio.run async_to_sync\n",
    "/bytes-like-list": b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n"
                        b"one two\n",
    "/write": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
              b"8\r\nwritten \r\n9\r\nreturned\n\r\n0\r\n\r\n",
    "/file-wrapper": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
                     b"\r\n4\r\nfrom\r\n4\r\n a f\r\n4\r\nile-\r\n4\r\nlike\r\n1\r\n\n\r\n"
                     b"0\r\n\r\n",
}


@pytest.mark.parametrize("path", RESPONSES)
def test_what_an_app_may_answer(start_worker, path):
    worker = start_worker(f"{SHAPES}:bodies")
    data = raw(worker.socket_path,
               f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert re.sub(rb"date: [^\r]*\r\n", b"", data) == RESPONSES[path]


@pytest.mark.parametrize(("path", "error"), [
    ("/str-piece", "TypeError: a WSGI body's piece must be bytes-like, not str"),
    ("/bytes-header", "TypeError: a WSGI header's name and value must be str, not (b'X-A', b'1')"),
    ("/bytes-status", "TypeError: WSGI status must be a str, not bytes"),
    ("/status-101", "ValueError: the app's response status 101 is not a final status"),
    ("/status-600", "ValueError: the app's response status 600 is not a final status"),
])
def test_what_pep_3333_does_not_allow_is_a_500_that_says_why(start_worker, path, error):
    worker = start_worker(f"{SHAPES}:bodies")
    assert get(worker.socket_path, path).status == 500
    assert error in worker.wait_output(error)


# -- real apps -----------------------------------------------------------------------------------

BEHIND_BALANCER = {"Host": "example.org", "rip-client": "203.0.113.7:5000",
                   "rip-server": "192.0.2.1:8443", "X-Forwarded-Proto": "https",
                   "X_Auth_User": "evil", "X-Auth-User": "good"}


def test_flask_sees_the_host_and_cannot_be_spoofed(start_worker):
    worker = start_worker(str(TEST_APPS / "flask_app.py"))
    seen = json.loads(get(worker.socket_path, "/seen", headers=BEHIND_BALANCER).body)
    assert seen == {"host": "example.org", "url": "https://example.org/seen",
                    "server": "192.0.2.1", "port": "8443", "auth_user": "good"}


def test_django_wsgi_is_served_by_its_name(start_worker):
    worker = start_worker(str(TEST_APPS / "django_site") + ":application")
    seen = json.loads(get(worker.socket_path, "/seen", headers=BEHIND_BALANCER).body)
    assert seen == {"SERVER_NAME": "192.0.2.1", "SERVER_PORT": "8443",
                    "REMOTE_ADDR": "203.0.113.7", "host": "example.org",
                    "url": "https://example.org/seen", "auth_user": "good"}
