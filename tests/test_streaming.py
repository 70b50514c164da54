"""Streams reach the client as the app produces them, and the client's leaving reaches the app
(issue 21): Server-Sent Events without any special header, a stream longer than the response
timeout (which limits silence, not length), a slow reader that never holds a worker, and a
client that closes or resets while its request runs."""

from __future__ import annotations

import socket
import struct
import time
import zlib

from tests.support.client import control, fetch, read_responses
from tests.support.waiting import wait_for
from tests.test_availability import healed, slow_requests


def open_stream(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode())
    return sock


def test_server_sent_events_arrive_as_they_are_sent(start_stack):
    """The first event at the client within 100 ms of being sent, with no special header."""
    stack = start_stack(workers=1)
    sock = open_stream(stack.port, "/sse?n=3&ms=500")
    start = time.monotonic()
    received = b""
    while b"event 0" not in received:
        received += sock.recv(65536)
    assert time.monotonic() - start < 0.1 + 0.1  # the app's own start included
    assert b"content-type: text/event-stream" in received
    assert b"transfer-encoding: chunked" in received
    while b"0\r\n\r\n" not in received:
        received += sock.recv(65536)
    sock.close()
    assert received.count(b"data: event") == 3
    healed(stack.port, 1)


def test_a_stream_longer_than_the_response_timeout_is_not_cut(start_stack):
    """response_timeout limits silence (before the first byte, between two pieces), not a
    stream's length: 3 s of events every 0.3 s with a 1-second timeout."""
    stack = start_stack(workers=1, args=("--response-timeout", "1"))
    with open_stream(stack.port, "/sse?n=10&ms=300") as sock:
        replies = read_responses(sock, ["GET"], timeout=10)
    assert replies[0].complete and replies[0].body.count(b"data: event") == 10
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"].get("hung", 0) == 0
    healed(stack.port, 1)


def test_max_stream_duration_ends_a_chunked_stream_and_cuts_a_declared_one(start_stack):
    """A stream that reaches max_stream_duration: a chunked one ends with its last chunk (an
    SSE client reconnects as after any end), one of a declared length is cut short; the app
    sees its client leave, and the worker is back in rotation."""
    stack = start_stack(workers=1, args=("--max-stream-duration", "1"))
    start = time.monotonic()
    with open_stream(stack.port, "/sse?n=100&ms=100") as sock:
        replies = read_responses(sock, ["GET"], timeout=10)
    assert 1 <= time.monotonic() - start < 2.5
    assert replies[0].complete and 5 <= replies[0].body.count(b"data: event") < 30
    healed(stack.port, 1)
    with open_stream(stack.port, "/stream?n=100&ms=100&length=100000") as sock:
        replies = read_responses(sock, ["GET"], timeout=10)
    assert not replies[0].complete and b"piece 5" in replies[0].body
    healed(stack.port, 1)
    _, stats = control(stack.control, "stats")
    assert stats["data"]["counters"]["streams_ended"] == 2
    assert stats["data"]["counters"].get("hung", 0) == 0


def test_a_compressed_stream_ended_at_max_stream_duration_is_whole_gzip(start_stack):
    """With compression on, the ended stream's gzip is finished (its last block and trailer
    before the last chunk): the client decompresses every event it got."""
    stack = start_stack(workers=1, args=("--max-stream-duration", "1", "--compression"))
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.sendall(b"GET /sse?n=100&ms=100 HTTP/1.1\r\nHost: localhost\r\n"
                 b"Accept-Encoding: gzip\r\n\r\n")
    with sock:
        replies = read_responses(sock, ["GET"], timeout=10)
    assert replies[0].complete and replies[0].header("content-encoding") == "gzip"
    inflate = zlib.decompressobj(wbits=31)
    events = inflate.decompress(replies[0].body)
    assert inflate.eof and 5 <= events.count(b"data: event") < 30
    healed(stack.port, 1)


def test_a_slow_reader_of_a_stream_holds_no_worker(start_stack):
    """A client that does not read: the worker finishes its 2 MB and serves others while the
    rest waits in the balancer's spool for the client."""
    stack = start_stack(workers=1)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", stack.port))
    slow.sendall(b"GET /big?size=2000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    try:
        time.sleep(0.3)
        start = time.monotonic()
        assert fetch(stack.port, "/pid").status == 200  # the only worker is free
        assert time.monotonic() - start < 1
        replies = read_responses(slow, ["GET"], timeout=10)
        assert replies[0].complete and len(replies[0].body) == 2000000
    finally:
        slow.close()
    healed(stack.port, 1)


def test_a_client_that_closes_is_seen_by_the_app_within_a_second(start_stack, short_tmp):
    """The client closes (FIN) or resets (RST) while its request runs: the ASGI app receives
    http.disconnect within a second, and the worker is back in rotation right after."""
    stack = start_stack(workers=1)
    for how in ("close", "reset"):
        seen = short_tmp / f"seen-{how}"
        sock = open_stream(stack.port, f"/wait-disconnect?file={seen}")
        time.sleep(0.3)  # the app has it
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_for(seen.exists, timeout=1.0, what=f"the app to see the client go ({how})")
        healed(stack.port, 1, timeout=2)


def test_an_app_streaming_to_a_client_that_left_is_stopped_at_its_next_piece(start_stack):
    """ASGI 2.4 (as uvicorn): once the client has left, the app's next send() raises an
    OSError, so an app that never reads http.disconnect stops producing its 10-second
    stream at once, and its worker is back in rotation."""
    stack = start_stack(workers=1)
    sock = open_stream(stack.port, "/stream?n=100&ms=100")
    assert b"piece 0" in sock.recv(65536)
    sock.close()
    start = time.monotonic()
    healed(stack.port, 1, timeout=3)
    assert time.monotonic() - start < 2
    worker = stack.workers[0]
    wait_for(lambda: "the client left mid-response; the app stopped" in worker.output(),
             timeout=2, what="the worker to log the client's leaving")
    assert "Traceback" not in worker.output()


def test_a_half_closed_client_still_gets_a_slow_answer(start_stack):
    """Half-closing after the request (some HTTP/1.0 tools, and curl with --no-keepalive
    when told so) is not leaving: the answer comes, an interim 100 before it."""
    stack = start_stack(workers=1)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /slow?ms=500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        replies = read_responses(sock, ["GET"], timeout=10)
    assert [r.status for r in replies] == [200]
    busy = slow_requests(stack.port, 1, 300)
    for thread in busy:
        thread.join(10)
    healed(stack.port, 1)
