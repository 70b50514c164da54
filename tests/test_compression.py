"""Compression of the app's responses by the balancer (issue 22): real balancer and worker
processes, real clients. Where behaviour is a choice, nginx's gzip module is the model."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from pathlib import Path

import pytest

from ripsvc.balancer import compress
from tests.support.client import fetch, pipeline, raw_tcp

APP = str(Path(__file__).parent / "apps" / "compress_app.py")
LINE = b"All work and no play makes Jack a dull boy. 0123456789\n"
GZIP = {"Accept-Encoding": "gzip"}


def text(size: int) -> bytes:
    return (LINE * (size // len(LINE) + 1))[:size]


@pytest.fixture
def stack(start_stack):
    return start_stack(workers=1, app=APP, args=("--compression",))


def test_off_by_default(start_stack):
    stack = start_stack(workers=1, app=APP)
    reply = fetch(stack.port, "/text?size=10000", headers=GZIP)
    assert "content-encoding" not in reply.headers and "vary" not in reply.headers
    assert reply.headers["content-length"] == "10000" and reply.body == text(10000)


def test_text_is_gzipped_for_a_client_that_accepts_it(stack):
    reply = fetch(stack.port, '/text?size=10000&etag="v1"', headers=GZIP)
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.headers["vary"] == "Accept-Encoding"
    assert "content-length" not in reply.headers  # chunked now
    assert reply.headers["etag"] == 'W/"v1"'  # as nginx: the bytes differ, not the meaning
    assert gzip.decompress(reply.body) == text(10000)
    assert len(reply.body) < 1000
    chunked = fetch(stack.port, "/chunked?size=50000&type=application/json", headers=GZIP)
    assert chunked.headers["content-encoding"] == "gzip"
    assert gzip.decompress(chunked.body) == text(50000)
    plain = fetch(stack.port, "/text?size=10000")  # no Accept-Encoding
    assert "content-encoding" not in plain.headers and plain.body == text(10000)
    assert plain.headers["vary"] == "Accept-Encoding"  # a cache keeps both
    assert plain.headers["content-length"] == "10000"
    refused = fetch(stack.port, "/text?size=10000", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


@pytest.mark.skipif(compress.brotli is None, reason="the brotli module is not installed")
def test_brotli_when_installed_and_accepted(stack):
    reply = fetch(stack.port, "/text?size=10000", headers={"Accept-Encoding": "gzip, br"})
    assert reply.headers["content-encoding"] == "br"
    assert compress.brotli.decompress(reply.body) == text(10000)
    assert fetch(stack.port, "/text?size=10000", headers={
        "Accept-Encoding": "br;q=0, gzip"}).headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(("query", "why"), [
    ("size=500", "shorter than compression_min_size"),
    ("size=10000&type=image/png", "not a compressible type"),
    ("size=10000&ce=gzip", "already encoded"),
    ("size=10000&cc=public,%20no-transform", "Cache-Control: no-transform"),
    ("size=10000&status=204", "no body"),
])
def test_what_is_not_compressed(stack, query, why):
    reply = fetch(stack.port, f"/text?{query}", headers=GZIP)
    assert reply.headers.get("content-encoding") in (None, "gzip" if "ce=" in query else None)
    if "status=204" not in query:
        assert reply.body == text(int(query.split("&")[0][5:])), why
        assert reply.headers["content-length"] == query.split("&")[0][5:]


def test_a_partial_response_and_head_are_left_alone(stack):
    head = fetch(stack.port, "/text?size=10000", method="HEAD", headers=GZIP)
    assert "content-encoding" not in head.headers and head.headers["content-length"] == "10000"
    partial = fetch(stack.port, "/text?size=10000&status=206", headers=GZIP)
    assert "content-encoding" not in partial.headers and partial.body == text(10000)


def test_an_http10_client_gets_no_compression(stack):
    """As nginx's default gzip_http_version 1.1."""
    reply = raw_tcp(stack.port, b"GET /text?size=10000 HTTP/1.0\r\nHost: localhost\r\n"
                    b"Accept-Encoding: gzip\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower() and body == text(10000)


def test_types_and_minimum_size_are_settings(start_stack):
    stack = start_stack(workers=1, app=APP, args=(
        "--compression", "--compression-types", "application/*+json,text/csv",
        "--compression-min-size", "100"))
    for kind, compressed in (("text/csv", True), ("application/ld%2Bjson", True),
                             ("text/html", False), ("application/json", False)):
        reply = fetch(stack.port, f"/text?size=200&type={kind}", headers=GZIP)
        assert ("content-encoding" in reply.headers) == compressed, kind


def test_the_vary_of_the_app_is_kept(stack):
    reply = fetch(stack.port, "/text?size=10000&vary=Cookie", headers=GZIP)
    assert reply.headers["vary"] == "Cookie, Accept-Encoding"
    said = fetch(stack.port, "/text?size=10000&vary=accept-encoding", headers=GZIP)
    assert said.headers["vary"] == "accept-encoding"


def test_pipelined_compressed_responses_keep_their_order(stack):
    requests = b"".join(b"GET /text?size=%d HTTP/1.1\r\nHost: localhost\r\n"
                        b"Accept-Encoding: gzip\r\n\r\n" % size for size in (3000, 200, 9000))
    replies = pipeline(stack.port, requests, ["GET"] * 3)
    assert gzip.decompress(replies[0].body) == text(3000)
    assert replies[1].body == text(200)
    assert gzip.decompress(replies[2].body) == text(9000)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["spooled", "x-accel-buffering-no"])
def test_a_stream_is_compressed_piece_by_piece_and_each_piece_arrives_at_once(stack,
                                                                               unbuffered):
    """Server-Sent Events 300 ms apart: each is compressed and flushed as it comes, so the
    client decodes each one about when it was sent, not at the end."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /sse?n=4&ms=300%s HTTP/1.1\r\nHost: localhost\r\n"
                     b"Accept-Encoding: gzip\r\n\r\n" % (b"&unbuffered=1" if unbuffered else b""))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert b"content-encoding: gzip" in head.lower()
        assert b"transfer-encoding: chunked" in head.lower()
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        events: list[tuple[bytes, float]] = []
        text_so_far = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            size_line, _, rest = buffer.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            chunk, buffer = rest[:size], rest[size + 2:]
            if size == 0:
                break
            text_so_far += decoder.decompress(chunk)
            while b"\n\n" in text_so_far:
                event, _, text_so_far = text_so_far.partition(b"\n\n")
                events.append((event, time.time()))
        assert decoder.eof  # the gzip stream was finished properly
    assert [e.split(b" at ")[0] for e, _ in events] == [b"data: event %d" % i for i in range(4)]
    for event, arrived in events:
        sent = float(event.split(b" at ")[1])
        assert arrived - sent < 0.2, (event, arrived - sent)  # not held back until the end
