"""HTTP/1.1 on the worker's socket for ASGI and WSGI apps: one asyncio protocol per connection.

This is the worker's hot path, so it sits directly on asyncio's Protocol and httptools' C parser
(bench/worker measured it ahead of uvicorn, which aiohttp's own server was not). aiohttp apps
are served by aiohttp's server instead (aiohttp_front.py) so that they get real aiohttp requests.

One request in flight per worker (not per connection) is the worker's contract: the shared
Gate says whether a completed request may run; if not, it gets `503` with `Rip-Worker-Busy: 1`
at once. Pipelined requests on one connection wait their turn in order, with reading paused.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import tempfile
import threading
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ripsvc import logs
from ripsvc.body import Body
from ripsvc.http11 import BUSY_HEADER, field_lines, simple_response, status_line
from ripsvc.worker.errors import ClientDisconnected
from ripsvc.worker.request import Request, parse_client, parse_server

if TYPE_CHECKING:
    from ripsvc.worker.core import Worker

log = logs.get("worker.http")

#: Request line plus header fields; beyond it the request is refused with 431.
MAX_HEADER_BYTES = 64 * 1024
#: How long a refused request's remaining input is drained before the connection closes.
LINGER_SECONDS = 2.0
#: A response written while the app holds the loop (`blocking`) gives up on a peer that took
#: nothing for this long. A safety net: the balancer spools what its client is slow to take,
#: and ends an unspooled response whose client stopped reading after send_timeout.
BLOCKING_WRITE_TIMEOUT = 600

_DROPPED: set[bytes] = set()


def dropped_app_header(name: bytes) -> None:
    """Say once per name that the app's Rip-* response header was left out."""
    if name not in _DROPPED:
        _DROPPED.add(name)
        log.warning("the app's response header %s was left out: Rip-* headers are the "
                    "worker's to the balancer", name.decode("latin-1"))


class HttpConnection(asyncio.Protocol):
    """One client connection (usually the balancer's keep-alive connection)."""

    # -- per connection --------------------------------------------------------------------
    transport: asyncio.Transport
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None

    def __init__(self, worker: Worker) -> None:
        # global
        self.worker = worker
        self.loop = worker.loop
        self.max_body = worker.options.max_body
        # per connection
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[Request | int] = deque()
        self.active: Request | None = None
        self.closing = False
        self.gone = False  # the peer closed: what the app sends now reaches no one
        #: The app holds the loop (a WSGI app runs on its thread): responses are written to
        #: the socket at once, waiting for it, since the transport's buffer would not be
        #: flushed until the app returns (worker/wsgi.py).
        self.blocking = False
        self.writable = threading.Event()  # cleared while the transport's buffer is full
        self.writable.set()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._done_waiter: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        # per request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body = Body()
        self._skip_body = False
        self._no_space = False  # the body did not fit on disk: answered 507 once read
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._scheme = "http"
        self._probe = False
        # per response being written
        self.response_started = False
        self.response_done = False
        self.close_after = False  # the response said Connection: close
        self._chunked = False
        self._head_only = False
        self._remaining = -1  # body bytes its Content-Length still promises (-1: none given)

    # -- asyncio.Protocol interface ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        self.client = self.server = None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self.client = transport.get_extra_info("peername")[:2]
            self.server = transport.get_extra_info("sockname")[:2]
        self.worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.gone = True
        if self._linger is not None:
            self._linger.cancel()
        self.worker.connections.discard(self)
        self.writable.set()  # a WSGI thread waiting to write must not hang
        for waiter in (self._drain_waiter, self._done_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for item in self.pending:
            if isinstance(item, Request):
                item.body.close()
        self.pending.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering: discard
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket, h2c) are not served; answer the request as plain HTTP/1.1
            # and close, since what follows on this connection is no longer HTTP/1.1.
            self._queue_error(0)
        except httptools.HttpParserError as exc:
            log.debug("malformed request: %s", exc)
            self._queue_error(431 if self._header_bytes > MAX_HEADER_BYTES else 400)

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._client = None
        self._server = None
        self._scheme = "http"
        self._headers = []
        self._header_bytes = 0
        self._body = Body()
        self._skip_body = False
        self._no_space = False
        self._probe = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("header section too large")
        name = name.lower()
        if name.startswith(b"rip-"):  # from the balancer, for us; not the app's business
            if name == b"rip-client":
                self._client = parse_client(value)
            elif name == b"rip-server":
                self._server = parse_server(value)
            elif name == b"rip-probe":
                self._probe = True
            return
        if name == b"x-forwarded-proto" and value in (b"http", b"https"):
            self._scheme = value.decode()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False  # the parser rejects it
                if too_big:
                    self._queue_error(413)
                    return

    def on_body(self, chunk: bytes) -> None:
        if self._skip_body:
            return
        try:
            self._body.append(chunk)
        except OSError as exc:  # a full disk: the app never sees a partial body
            log.error("cannot spool a request body to %s: %s", tempfile.gettempdir(),
                      exc.strerror or exc)
            self._body.close()
            # Answered once the body is read: the balancer expects no answer before that.
            self._skip_body = self._no_space = True
            return
        if self._body.size > self.max_body:
            self._queue_error(413)

    def on_message_complete(self) -> None:
        if self._no_space:
            self._queue_error(507)
            return
        if self._skip_body:
            return
        if self._probe:
            self._answer_probe()
            return
        parser = self.parser
        request = Request(
            parser.get_method().decode("ascii"),
            self._url,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
            self._body,
            self._client,
            self._scheme,
            self._server,
        )
        if self.active is not None or self.pending:
            self.pending.append(request)  # pipelined: answered in order
            self.transport.pause_reading()
        else:
            self.dispatch(request)

    # -- dispatch ------------------------------------------------------------------------------
    def _answer_probe(self) -> None:
        """The balancer asks whether this worker is idle (after trouble on another of its
        connections): answered here, never by the app, whatever runs meanwhile."""
        self._body.close()
        worker = self.worker
        if worker.accepting and not worker.gate.busy:
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            self.transport.write(simple_response(503, close=False, extra=BUSY_HEADER))


    def _queue_error(self, status: int) -> None:
        """Refuse the request being parsed with `status` (0: none) and close the connection."""
        self._skip_body = True
        self._body.close()
        self.transport.pause_reading()
        if self.active is not None or self.pending:
            self.pending.append(status)
        else:
            self._fail(status)

    def _fail(self, status: int) -> None:
        """Answer `status` (0: nothing) and close, lingering so the client can read it.

        A client still sending a body we refused would get a reset, and lose our response,
        if we closed at once; so (like nginx's lingering close) we stop writing, discard what
        it still sends for a moment, and close when it does or when LINGER_SECONDS passed.
        """
        self.closing = True
        if status:
            self.transport.write(simple_response(status, close=True))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def dispatch(self, request: Request) -> None:
        worker = self.worker
        if not worker.accepting:
            request.body.close()
            self._fail_busy()
            return
        if not worker.gate.acquire():
            request.body.close()
            self.transport.write(
                simple_response(503, close=not request.keep_alive, extra=BUSY_HEADER)
            )
            if not request.keep_alive:
                self._fail(0)
            return
        self.active = request
        self.response_started = self.response_done = self._chunked = self.close_after = False
        self._head_only = request.method == "HEAD"
        self._remaining = -1
        self.loop.create_task(self._run(request))

    def _fail_busy(self) -> None:
        self.closing = True
        self.transport.write(simple_response(503, close=True, extra=BUSY_HEADER))
        self.transport.close()

    async def _run(self, request: Request) -> None:
        try:
            worker = self.worker
            if worker.watcher is not None:  # module reload: a changed app is re-imported first
                await worker.before_request()
            await worker.host.handle(request, self)
            if self.gone:
                pass  # the client left: nothing is missing that it could see
            elif not self.response_started:
                log.error("%s %s: the app returned without a response", request.method,
                          request.target.decode("latin-1"))
                self._write_500()
            elif not self.response_done:
                log.error("%s %s: the app did not finish its response", request.method,
                          request.target.decode("latin-1"))
                self.closing = True
        except ClientDisconnected:
            log.info("%s %s: the client left mid-response; the app stopped", request.method,
                     request.target.decode("latin-1"))
        except Exception:
            log.exception("%s %s: the app raised", request.method, request.target.decode("latin-1"))
            if self.response_started:
                self.closing = True  # headers are out: only closing tells the client
            else:
                self._write_500()
        finally:
            request.body.close()
            self.active = None
            self._done_waiter = None
            self.worker.request_finished()
            self._after_response(request)

    def _write_500(self) -> None:
        if not self.closing:
            self.transport.write(simple_response(500, close=True))
        self.closing = True

    def _after_response(self, request: Request) -> None:
        if self.closing or self.close_after or not request.keep_alive or not self.worker.accepting:
            self.closing = True
            self.transport.close()
            return
        # self.active is read through a method: dispatch() sets it, which a narrowed read
        # would not see (compiled, a TypeError: tests/support/narrowing.py).
        while self.pending and self._idle() and not self.closing:
            item = self.pending.popleft()
            if isinstance(item, int):
                self._fail(item)
                return
            self.dispatch(item)
        if not self.pending and not self.closing:
            self.transport.resume_reading()

    def _idle(self) -> bool:
        return self.active is None

    def close_if_idle(self) -> None:
        """Used on graceful stop: idle keep-alive connections close now, busy ones after."""
        if self.active is None:
            self.closing = True
            self.transport.close()

    # -- response interface for the app adapters ------------------------------------------------
    def start_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                       more: bool) -> None:
        """Send the status line and headers, with the first piece of the body.

        Without a Content-Length from the app, a complete response gets one and a streamed
        response uses chunked transfer coding.
        """
        if self.response_started:
            raise RuntimeError("response already started")
        if not 200 <= status <= 599:
            # A 1xx is not an answer (the client would take the next response for this
            # request's), and nothing above 599 is HTTP: a 500 instead, as for any bad response.
            raise ValueError(f"the app's response status {status} is not a final status "
                             "(200 to 599)")
        has_length = False
        kept = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
                length = value.strip()
                if not length.isdigit():
                    raise ValueError(f"invalid Content-Length from the app: {value!r}")
                self._remaining = int(length)
            elif lname == b"transfer-encoding" or lname == b"connection":
                continue  # framing is ours to decide
            elif lname.startswith(b"rip-"):
                # The worker's words to the balancer (Rip-Worker-Busy would have the balancer
                # send the request to another worker again): never the app's to say.
                dropped_app_header(lname)
                continue
            kept.append((name, value))
        lines = field_lines(kept)  # ValueError (→ 500) before anything is sent
        bodiless_status = status == 204 or status == 304
        no_body = self._head_only or bodiless_status
        if no_body:
            self._remaining = -1
        elif has_length and (len(body) > self._remaining
                             or (not more and len(body) < self._remaining)):
            raise ValueError(f"the app's response body ({len(body)} bytes{' so far' * more}) "
                             f"does not match its Content-Length ({self._remaining})")
        self.response_started = True
        parts = [status_line(status), self.worker.date_header, lines]
        if not has_length and not bodiless_status:
            if not more:  # a HEAD response, too, tells the length a GET would have
                parts.append(b"content-length: %d\r\n" % len(body))
            elif not self._head_only:
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if (self.closing or not self.active or not self.active.keep_alive
                or self.worker.last_request()):
            self.close_after = True
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if no_body:
            self._head_only = True
        elif body:
            parts.append(self._frame(body))
        if not more and self._chunked:
            parts.append(b"0\r\n\r\n")
        if not self.closing:
            self._send(b"".join(parts))
        if not more:
            self._mark_done()

    def write(self, body: bytes, more: bool) -> None:
        if not self.response_started:
            raise RuntimeError("response body before response start")
        if self.response_done:
            raise RuntimeError("response already complete")
        data = b""
        if body and not self._head_only:
            data = self._frame(body)
        if not more and self._chunked:
            data += b"0\r\n\r\n"
        if data and not self.closing:
            self._send(data)
        if not more:
            self._mark_done()

    def _send(self, data: bytes) -> None:
        if not self.blocking or self.transport.get_write_buffer_size():
            self.transport.write(data)  # (after bytes still buffered: in order)
            return
        # Straight to the socket, waiting while it is full: the loop is not running.
        sock = self.transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        view = memoryview(data)
        sent, total = 0, len(data)
        while sent < total:
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                if not poller.poll(BLOCKING_WRITE_TIMEOUT * 1000):
                    log.warning("the peer read nothing for %d s: closing",
                                BLOCKING_WRITE_TIMEOUT)
                    self.gone = self.closing = True
                    return
            except OSError:  # EPIPE, ECONNRESET: the peer left; the loop sees it later
                self.gone = self.closing = True
                return

    def _mark_done(self) -> None:
        if self._remaining > 0:
            # The client would wait for bytes that never come: only closing ends it.
            log.error("the app's response is %d bytes shorter than its Content-Length: "
                      "closing the connection", self._remaining)
            self.closing = True
        self.response_done = True
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _frame(self, body: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(body), body)
        if self._remaining >= 0:
            if len(body) > self._remaining:
                self.closing = True  # what was sent is all the client will get
                raise RuntimeError(f"the app's response is longer than its Content-Length "
                                   f"({len(body) - self._remaining} bytes more)")
            self._remaining -= len(body)
        return body

    async def drain(self) -> None:
        """Wait until the transport accepts more data (or the client went away)."""
        if self.writable.is_set() or self.closing:
            return
        self._drain_waiter = self.loop.create_future()
        await self._drain_waiter

    async def wait_done(self) -> None:
        """Wait until the response is complete or the client disconnected."""
        if self.closing or self.response_done:
            return
        self._done_waiter = self.loop.create_future()
        await self._done_waiter

