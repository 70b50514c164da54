"""The balancer's connection to one worker's Unix socket: write a request, read its response.

A worker serves one request at a time, so a slot has at most one connection, kept alive between
requests. The response is read as fast as the worker writes it and handed to the balancer as it
comes (head, body pieces, end); the balancer forwards it to the client or spools it, so the
worker is free the moment its app is done, however slow the client.

Its states:

    CONNECTING ──▶ IDLE ──▶ SENDING ──▶ WAITING ──▶ RECEIVING ──▶ IDLE …
         └───────────┴─────────┴───────────┴────────────┴──▶ CLOSED

A connection carries either an exchange or a probe (a request the worker answers itself,
saying whether it is idle). Anything unexpected (bytes nobody asked for, a malformed or
oversized head, a response cut short) ends the connection: the balancer decides what that
means for the exchange and the slot. No I/O happens here but through the transport.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import httptools

from ripsvc import logs
from ripsvc.http11 import NO_CALLBACKS

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer
    from ripsvc.balancer.exchange import Exchange
    from ripsvc.balancer.pool import Slot

log = logs.get("balancer.upstream")

CONNECTING: Final = 0
IDLE: Final = 1
SENDING: Final = 2  # the request head is written; a spooled body is being pumped
WAITING: Final = 3
RECEIVING: Final = 4
CLOSED: Final = 5
NAMES = ("connecting", "idle", "sending", "waiting", "receiving", "closed")

#: A response head larger than this is broken (the worker's own limit is the same).
MAX_HEAD_BYTES = 64 * 1024
#: What the balancer sends to ask a worker whether it is idle (answered by the worker itself:
#: 204 when idle, 503 with Rip-Worker-Busy when not; never seen by the app).
PROBE = b"GET /.rip-probe HTTP/1.1\r\nhost: rip\r\nrip-probe: 1\r\n\r\n"
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


class Upstream:
    """One connection to a worker (an asyncio protocol: the transport is its only I/O)."""

    transport: Any  # asyncio.Transport; anything with write, close, pause/resume_reading

    def __init__(self, balancer: Balancer, slot: Slot) -> None:
        # global
        self.balancer = balancer
        self.slot = slot
        # per connection
        self.state = CONNECTING
        self.parser = httptools.HttpResponseParser(self)
        self.writable = True
        # per request: an exchange, or a probe
        self.exchange: Exchange | None = None
        self.probe = False
        self._body_sent = 0  # bytes of a spooled request body written so far
        # per response
        self._head_buffer = b""  # the response head received so far, until it is complete
        self._head = b""  # the complete head: status line and header lines
        self._complete = False  # the parser saw its end during this read
        self._extra = False  # bytes after the end: the worker said more than it was asked
        self._keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.state != CONNECTING:  # closed while connecting
            transport.close()
            return
        self.state = IDLE
        if self.exchange is not None:
            self._write_request(self.exchange)
        elif self.probe:
            self._write_probe()

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self.parser = httptools.HttpResponseParser(NO_CALLBACKS)  # a cycle less (client.py)
        if was == CLOSED:
            return  # closed by us, who knew what it carried
        exchange, probe = self.exchange, self.probe
        self.exchange = None
        self.probe = False
        if exchange is None and not probe and was == IDLE:
            self.balancer.upstream_closed(self)  # a keep-alive connection the worker ended
            return
        why = "the worker closed the connection" + (" mid-response" if was == RECEIVING else "")
        self.balancer.upstream_lost(self, exchange, why, was >= SENDING)

    def connect_failed(self, why: str) -> None:
        """Called by the network instead of connection_made."""
        self.state = CLOSED
        exchange = self.exchange
        self.exchange = None
        self.balancer.upstream_lost(self, exchange, why, False)

    def eof_received(self) -> bool:
        return False  # the worker closed its side: close ours (connection_lost follows)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.state == SENDING:
            self._pump_body()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # a bug of ours: logged; this connection ends, the slot is
            self.balancer.internal_error(exc, f"worker {self.slot.id}'s connection")
            self._broken("internal error")  # probed, and repaired if need be (core.repair)

    def _received(self, data: bytes) -> None:
        if self.state < WAITING or self.state == CLOSED:
            if self.state != CLOSED:
                self._broken(f"the worker sent {len(data)} bytes before it was asked")
            return
        exchange = self.exchange
        if exchange is not None and exchange.head_only:
            self._head_only_received(data)
            return
        if self.state == WAITING:  # the head is kept whole; the parser checks and frames it
            buffered = self._head_buffer + data if self._head_buffer else data
            end = buffered.find(b"\r\n\r\n")
            if end >= 0:
                self._head = buffered[:end + 2]
                self._head_buffer = b""
                self.state = RECEIVING
            elif len(buffered) > MAX_HEAD_BYTES:
                self._broken("response head too large")
                return
            else:
                self._head_buffer = buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                raise cause from None  # ours, not the worker's: the caller reports it
            self._broken(f"malformed response: {exc}")
            return
        if self._complete:
            self._finish()
        elif exchange is not None:
            self.balancer.response_read(exchange)

    # -- sending -------------------------------------------------------------------------------
    def send(self, exchange: Exchange) -> None:
        """Carry `exchange`'s request: now, or once the connection is made."""
        self.exchange = exchange
        self.probe = False
        if self.state == IDLE:
            self._write_request(exchange)

    def send_probe(self) -> None:
        self.exchange = None
        self.probe = True
        if self.state == IDLE:
            self._write_probe()

    def _reset_response(self) -> None:
        self._head_buffer = self._head = b""
        self._complete = self._extra = False
        self._keep_alive = True

    def _write_request(self, exchange: Exchange) -> None:
        self._reset_response()
        body = exchange.body
        if body.in_memory:
            self.state = WAITING
            self.transport.write(exchange.head + body.read_all() if body.size else exchange.head)
        else:
            self.state = SENDING
            self._body_sent = 0
            self.transport.write(exchange.head)
            self._pump_body()

    def _write_probe(self) -> None:
        self._reset_response()
        self.state = WAITING
        self.transport.write(PROBE)

    def _pump_body(self) -> None:
        """A body spooled to disk goes out a chunk at a time, as fast as the worker reads it."""
        exchange = self.exchange
        assert exchange is not None
        while self.writable:
            chunk = exchange.body.read_at(self._body_sent)
            if not chunk:
                self.state = WAITING
                return
            self._body_sent += len(chunk)
            self.transport.write(chunk)

    def close(self) -> None:
        """End the connection from our side; no event follows for what it carried."""
        if self.state == CONNECTING:
            self.cancel_connect()  # connection_made closes it, if it comes
        elif self.state != CLOSED:
            self.state = CLOSED
            self.exchange = None
            self.probe = False
            self.transport.close()

    def cancel_connect(self) -> None:
        """Closed before the network made it: connection_made then closes it at once."""
        self.state = CLOSED
        self.exchange = None
        self.probe = False

    # -- response parser callbacks ---------------------------------------------------------------
    # No on_header: a callback per field costs more than one look at the whole head, which
    # data_received keeps (the parser has seen all of it by now).
    def on_message_begin(self) -> None:
        if self._complete:  # a second response in one read: nobody asked for it
            self._extra = True

    def on_headers_complete(self) -> None:
        if self._extra:
            return
        status = self.parser.get_status_code()
        head = self._head
        if self.probe:
            return
        exchange = self.exchange
        assert exchange is not None
        if not 200 <= status <= 599:  # a worker never sends an interim response: not an answer
            raise httptools.HttpParserError(f"status {status} is not a final status")
        if passable(head, status):
            self.balancer.response_head(self, exchange, status, head, None)
            return
        fields = header_fields(head.split(b"\r\n")[1:-1])
        if fields is None:  # the parser accepted it, so this is not expected to happen
            raise httptools.HttpParserError("malformed response header")
        self.balancer.response_head(self, exchange, status, b"", fields)

    def on_body(self, chunk: bytes) -> None:
        if self._extra or self.probe:
            return
        exchange = self.exchange
        assert exchange is not None
        self.balancer.response_body(exchange, chunk)

    def on_message_complete(self) -> None:
        if not self._complete:
            self._complete = True
            self._keep_alive = self.parser.should_keep_alive()

    def _finish(self) -> None:
        """After the read in which the response ended: the connection is idle again (or
        closed, if the worker said so or said more), and the balancer hears of it."""
        exchange = self.exchange
        probe = self.probe
        self.exchange = None
        self.probe = False
        reusable = self._keep_alive and not self._extra
        if reusable:
            self.state = IDLE
        else:
            self.close()
        if probe:
            self.balancer.probe_answered(self, self.parser.get_status_code(), reusable)
        elif exchange is not None:
            self.balancer.response_complete(self, exchange, reusable, self._extra)

    # -- HEAD responses ------------------------------------------------------------------------
    def _head_only_received(self, data: bytes) -> None:
        """A HEAD response has headers only, whatever Content-Length says, so it is parsed here.

        httptools has no way to be told that a response answers HEAD; it would wait for a body.
        """
        buffered = self._head_buffer + data
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            if len(buffered) > MAX_HEAD_BYTES:
                self._broken("response head too large")
            else:
                self._head_buffer = buffered
            return
        if end + 4 < len(buffered):
            self._broken("the worker sent a body or more after a HEAD response")
            return
        head = buffered[:end]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        fields = header_fields(lines[1:])
        if (len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit()
                or len(parts[1]) != 3 or fields is None):
            self._broken("malformed response head")
            return
        exchange = self.exchange
        assert exchange is not None
        self._keep_alive = parts[0] == b"HTTP/1.1" and not any(
            n == b"connection" and v.lower() == b"close" for n, v in fields)
        self._complete = True
        self.state = RECEIVING
        self.balancer.response_head(self, exchange, int(parts[1]), b"", fields)
        self._finish()

    def _broken(self, why: str) -> None:
        exchange = self.exchange
        started = self.state >= SENDING
        self.close()
        self.balancer.upstream_lost(self, exchange, why, started)
