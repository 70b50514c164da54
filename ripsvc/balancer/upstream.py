"""The balancer's keep-alive connection to one worker's Unix socket.

A worker serves one request at a time, so one connection per worker is all the balancer needs.
The response is read as fast as the worker writes it (into memory, spooled to a file when
large), so the worker is free the moment its app is done, however slow the client; only a
response marked `X-Accel-Buffering: no` is streamed through, holding its worker until it ends.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, cast

import httptools

from ripsvc import logs
from ripsvc.balancer.exchange import Exchange, Response
from ripsvc.http11 import NO_CALLBACKS

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer
    from ripsvc.balancer.pool import Slot

log = logs.get("balancer.upstream")

#: A response head larger than this is broken (the worker's own limit is the same).
MAX_HEAD_BYTES = 64 * 1024
#: Header fields of a response head (lower-cased) that the balancer acts on or removes: ours
#: (Rip-*), hop-by-hop ones, and the streaming switch.
SPECIAL_FIELD = re.compile(rb"\r\n(?:rip-|(?:connection|keep-alive|proxy-connection|te|trailer"
                           rb"|transfer-encoding|upgrade|x-accel-buffering)[ \t]*:)")


def passable(head: bytes, status: int) -> bool:
    """Can a worker's response head (status line and header lines, each ending in CRLF) go to
    the client as it is? Yes when it is HTTP/1.1 with a body framed by one Content-Length and
    none of the fields the balancer has to act on: then the fields need not be taken apart."""
    if status < 200 or status == 204 or status == 304 or not head.startswith(b"HTTP/1.1 "):
        return False
    lower = head.lower()
    return lower.count(b"\r\ncontent-length:") == 1 and SPECIAL_FIELD.search(lower) is None


def header_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]] | None:
    """Header lines → [(lower-cased name, value)], obs-folded lines joined; None if one is
    not a header field."""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:  # obs-fold: continues the previous value
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        fields.append((name.lower(), value.strip()))
    return fields


class Upstream(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, balancer: Balancer, slot: Slot) -> None:
        # global
        self.balancer = balancer
        self.slot = slot
        # per connection
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        # per exchange
        self.exchange: Exchange | None = None
        self.response: Response | None = None
        self.deadline = 0.0
        self.head_only = False
        self._head_buffer = b""  # the response head received so far, until it is complete
        self._head: bytes | None = None  # the complete head: status line and header lines
        self._writable = asyncio.Event()  # flow control for large request bodies
        self._writable.set()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = httptools.HttpResponseParser(NO_CALLBACKS)  # a cycle less (front.py)
        if self.slot.upstream is self:
            self.slot.upstream = None
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            # The request was written: the worker may have started on it.
            self.balancer.upstream_failed(exchange, self.slot, True,
                                          "the worker closed the connection mid-request")

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            log.warning("worker %s sent %d bytes with no request pending; closing",
                        self.slot.id, len(data))
            self.close()
            return
        if self.head_only:
            self._head_received(data)
            return
        if self._head is None:  # kept whole for the client; the parser checks and frames it
            buffered = self._head_buffer + data if self._head_buffer else data
            end = buffered.find(b"\r\n\r\n")
            if end >= 0:
                self._head = buffered[:end + 2]
                self._head_buffer = b""
            elif len(buffered) > MAX_HEAD_BYTES:
                self._broken("response head too large")
                return
            else:
                self._head_buffer = buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(f"malformed response: {exc}")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- sending -------------------------------------------------------------------------------
    def send(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.response = Response()
        self.head_only = exchange.method == "HEAD"
        self._head = None
        self.deadline = self.balancer.loop.time() + self.balancer.options.response_timeout
        body = exchange.body
        if body.in_memory:
            self.transport.write(exchange.head + body.read_all())
        else:
            self.transport.write(exchange.head)
            self.balancer.loop.create_task(self._send_spooled(exchange))

    async def _send_spooled(self, exchange: Exchange) -> None:
        """A body spooled to disk goes out chunk by chunk, as fast as the worker reads it."""
        for chunk in exchange.body.chunks():
            if self.closed or self.exchange is not exchange:
                return
            self.transport.write(chunk)
            await self._writable.wait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    # -- response parser callbacks ---------------------------------------------------------------
    # No on_header: a callback per field costs more than one look at the whole head, which
    # data_received keeps (the parser has seen all of it by now).
    def on_headers_complete(self) -> None:
        response, head = self.response, self._head
        assert response is not None and head is not None
        response.status = status = self.parser.get_status_code()
        if passable(head, status):
            response.head = head
            return
        fields = header_fields(head.split(b"\r\n")[1:-1])
        if fields is None:  # the parser accepted it, so this is not expected to happen
            raise httptools.HttpParserError("malformed response header")
        response.headers = fields
        self._headers_done()

    def _headers_done(self) -> None:
        response = self.response
        assert response is not None and self.exchange is not None
        for name, value in response.headers:
            if name.startswith(b"rip-") and name == b"rip-worker-busy":
                response.busy = True
            elif name == b"x-accel-buffering" and value.strip().lower() == b"no":
                response.streaming = True
        if response.streaming and not response.busy:
            self.exchange.client.stream_start(self.exchange, response)

    def on_body(self, chunk: bytes) -> None:
        response = self.response
        assert response is not None and self.exchange is not None
        if response.streaming and not response.busy:
            self.exchange.client.stream_body(self.exchange, chunk)
        else:
            response.body.append(chunk)

    def on_message_complete(self) -> None:
        exchange, response = self.exchange, self.response
        assert exchange is not None and response is not None
        self.exchange = self.response = None
        if not self.parser.should_keep_alive():
            self.close()
        self.balancer.upstream_done(exchange, self.slot, response)

    # -- HEAD responses ------------------------------------------------------------------------
    def _head_received(self, data: bytes) -> None:
        """A HEAD response has headers only, whatever Content-Length says, so it is parsed here.

        httptools has no way to be told that a response answers HEAD; it would wait for a body.
        """
        self._head_buffer += data
        end = self._head_buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head_buffer) > 65536:
                self._broken("response head too large")
            return
        head, self._head_buffer = self._head_buffer[:end], b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._broken("malformed response status line")
            return
        response = self.response
        assert response is not None
        fields = header_fields(lines[1:])
        if fields is None:
            self._broken("malformed response header")
            return
        response.headers = fields
        self.parser = httptools.HttpResponseParser(self)  # the old one awaits a body
        response.status = int(parts[1])
        self._headers_done()
        close = any(n == b"connection" and v.lower() == b"close" for n, v in response.headers)
        exchange = self.exchange
        assert exchange is not None
        self.exchange = self.response = None
        if close:
            self.close()
        self.balancer.upstream_done(exchange, self.slot, response)

    def _broken(self, why: str) -> None:
        exchange = self.exchange
        self.exchange = None
        self.close()
        if exchange is not None:
            self.balancer.upstream_failed(exchange, self.slot, True, why)
