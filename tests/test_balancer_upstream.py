"""The balancer's reading of worker responses and of lax request heads, without processes:
which response heads go to the client as the worker wrote them, how header fields are split
out otherwise, whether the parser or the balancer refuses lax request heads, and that a
closed connection does not outlive its close."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path
from types import ModuleType

import httptools
import pytest

from ripsvc.balancer import client as front
from ripsvc.balancer.upstream import header_fields, passable
from tests.support.machine import Rig

PLAIN = (b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 17:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 5\r\n")


def test_a_plain_response_head_passes_as_it_is():
    assert passable(PLAIN, 200)
    assert passable(PLAIN.replace(b"200 OK", b"404 Not Found"), 404)


@pytest.mark.parametrize("head, status", [
    (PLAIN.replace(b"Content-Length: 5\r\n", b""), 200),  # framed by the connection's end
    (PLAIN + b"content-length: 5\r\n", 200),  # two Content-Lengths
    (PLAIN.replace(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 200),
    (PLAIN + b"Rip-Worker-Busy: 1\r\n", 503),
    (PLAIN + b"rip-anything: x\r\n", 200),
    (PLAIN + b"Connection: close\r\n", 200),
    (PLAIN + b"Keep-Alive: timeout=5\r\n", 200),
    (PLAIN + b"Proxy-Connection: keep-alive\r\n", 200),
    (PLAIN + b"TE: trailers\r\n", 200),
    (PLAIN + b"Trailer: X-Sum\r\n", 200),
    (PLAIN + b"Upgrade: websocket\r\n", 200),
    (PLAIN + b"X-Accel-Buffering: no\r\n", 200),
    (PLAIN + b"connection : close\r\n", 200),  # white space before the colon
    (PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"), 200),
    (PLAIN, 204),
    (PLAIN, 304),
    (PLAIN, 101),
])
def test_heads_the_balancer_must_act_on_do_not_pass(head, status):
    assert not passable(head, status)


def test_fields_that_only_look_special_still_pass():
    assert passable(PLAIN + b"X-Rip-Note: a\r\nTeapot: yes\r\nConnectionless: 1\r\n"
                    b"X-Upgrade: no\r\n", 200)


def test_header_fields_are_split_lowercased_and_unfolded():
    assert header_fields([b"Content-Type: text/plain", b"X-Long: a", b"  b", b"\tc",
                          b"Empty:"]) == [
        (b"content-type", b"text/plain"), (b"x-long", b"a b c"), (b"empty", b"")]


@pytest.mark.parametrize("line", [b"no colon here", b": no name", b"X-Space : v"])
def test_header_fields_refuses_what_is_not_a_field(line):
    assert header_fields([b"Content-Type: text/plain", line]) is None


@pytest.mark.parametrize("head", front.LAX_HEADS)
def test_lax_heads_are_refused_by_the_parser_unless_the_balancer_checks(head):
    """CHECK_HEADS is off only where httptools refuses every lax form itself (llhttp); with
    Debian's httptools 0.1.1 it is on and the balancer refuses them (test_balancer_edges)."""
    if front.CHECK_HEADS:
        assert httptools.__version__.startswith("0.1.")
        return
    with pytest.raises(httptools.HttpParserError):
        httptools.HttpRequestParser(object()).feed_data(head)


def import_hotpath() -> ModuleType:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import hotpath
    finally:
        sys.path.pop(0)
    return hotpath


def test_the_hot_path_benchmark_still_runs():
    """bench/hotpath.py drives the real protocol objects; its own assertions check that every
    request got its 200 (the passed-through response included)."""
    hotpath = import_hotpath()
    for name, run in hotpath.PATHS.items():
        assert run(300) > 0, name


def test_a_closed_connection_is_freed_without_the_cyclic_collector():
    """An httptools parser holds its connection's callbacks. Left in place after the close,
    that cycle kept each connection and its transport until the cyclic collector ran: over TLS
    the transport holds uvloop's 256 KB buffer and OpenSSL's state, and with a new connection
    per request the balancer's heap grew by 100 MB (docs/performance.md)."""
    rig = Rig(workers=1)
    gc.disable()
    try:
        client = rig.connect(b"https")
        client.send(b"GET /server HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert client.received.startswith(b"HTTP/1.1 200 "), client.received
        client.reset()
        client_transport = weakref.ref(client.transport)
        rig.clients.clear()
        del client

        worker = rig.worker("1")
        other = rig.connect()
        other.send(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rig.settle()
        worker.respond(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        upstream_transport = weakref.ref(worker.connections[0])
        worker.close()
        worker.connections.clear()

        assert client_transport() is None, "a closed client connection is kept by a cycle"
        assert upstream_transport() is None, "a closed worker connection is kept by a cycle"
    finally:
        gc.enable()
