"""Client connections: parse, check and complete each request, then answer it.

A request is read whole (body included, spooled to a file when large) before a worker is
chosen, so a slow client never holds a worker. Framing that two parsers could read differently
(Content-Length with Transfer-Encoding, two Content-Lengths, obs-fold, …) is refused with 400
and the connection closes.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import itertools
import json
import os
import re
import ssl
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from ripsvc import logs
from ripsvc.balancer import proxyproto
from ripsvc.balancer.exchange import Exchange, Response
from ripsvc.body import Body
from ripsvc.http11 import NO_CALLBACKS, simple_response, status_line

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer

log = logs.get("balancer.front")

#: Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded in either direction.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
#: Request headers the balancer sets itself, whatever the client sent.
OWN_REQUEST_HEADERS = frozenset({b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
                                 b"x-forwarded-host", b"content-length", b"expect"})
RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"x-accel-buffering"}
LINGER_SECONDS = 2.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAX_HEAD = re.compile(rb"(?<!\r)\n|\r\n[ \t]")  # bare LF, or obs-fold

#: Request heads that two parsers could read differently: bare LF (in the request line, a
#: field, the end), obs-fold, a bare CR in a value, white space before a field's colon.
LAX_HEADS = (b"GET / HTTP/1.1\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
             b"GET / HTTP/1.1\r\nHost: a\r\n\n", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
             b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", b"GET / HTTP/1.1\r\nX-A : b\r\n\r\n")


def _parser_refuses_lax_heads() -> bool:
    """Does httptools itself refuse every one of LAX_HEADS? llhttp (httptools ≥ 0.2) does, so
    the balancer's own checks are needed only with Debian 12's httptools 0.1.1."""
    for probe in LAX_HEADS:
        try:
            httptools.HttpRequestParser(NO_CALLBACKS).feed_data(probe)
        except httptools.HttpParserError:
            continue
        return False
    return True


CHECK_HEADS = not _parser_refuses_lax_heads()

_request_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex() + "-"


def new_request_id() -> str:
    # hex() rather than an f-string with a format spec: compiled, that one is two method
    # calls and costs twice as much (bench/hotpath.py --instructions).
    return _ID_PREFIX + hex(next(_request_ids))[2:]


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _address(host: bytes, port: int) -> bytes:
    return b"[%s]:%d" % (host, port) if b":" in host else b"%s:%d" % (host, port)


class ClientConnection(asyncio.Protocol):
    """One client connection on a listener: plain HTTP, HTTPS (`scheme` b"https", TLS done by
    the transport), or a redirect listener (`redirect_port`: every request gets 301 there)."""

    transport: asyncio.Transport

    def __init__(self, balancer: Balancer, scheme: bytes = b"http", redirect_port: int = 0,
                 proxy_protocol: bool = False) -> None:
        # global
        self.balancer = balancer
        self.options = balancer.options
        self.loop = balancer.loop
        self.scheme = scheme
        self.redirect_port = redirect_port
        #: Headers added to every response on this listener (HSTS on HTTPS).
        self.extra = balancer.hsts_header if scheme == b"https" else b""
        # per connection
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.peer = b"unix"
        self.peer_port = 0
        self.client_address = b"unix:0"  # what Rip-Client tells the worker
        self.proxied_peer: tuple[str, int] | None = None  # from a PROXY header before TLS
        self.trusted = False  # a proxy in front whose X-Forwarded-* and X-Request-Id we keep
        #: Bytes of a PROXY protocol header still being received (None: none expected).
        self._proxy_header: bytes | None = b"" if proxy_protocol else None
        self.current: Exchange | None = None  # sent on, not yet answered
        self.pending: deque[Exchange | BadRequest] = deque()  # pipelined behind it
        self.streaming: Exchange | None = None
        self.deadline = 0.0  # when the sweeper times this connection out (0: never)
        self._linger: asyncio.TimerHandle | None = None
        self._stream_chunked = False
        self._writable = asyncio.Event()  # cleared while the client is slower than we write
        self._writable.set()
        # per request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body = Body()
        self._refused = False
        self._reading = False  # between the first byte of a request and its end
        self._request_id = ""  # kept from a trusted proxy
        self._in_body = False
        self._head_tail = b""  # the end of the previous read, for _check_head
        self._host = b""
        self._allowed_host: bytes | None = None  # the last Host found in the registry
        self._allowed_generation = -1

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if self.proxied_peer is not None:
            self._set_peer(*self.proxied_peer)
        elif isinstance(peer, tuple):
            self._set_peer(str(peer[0]), int(peer[1]))
        self.balancer.clients.add(self)
        self.deadline = self.loop.time() + self.options.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser holds this connection's callbacks, a cycle that only the cyclic garbage
        # collector would break, keeping the transport with it (over TLS, uvloop's 256 KB
        # buffer and OpenSSL's state) for as long as it takes to run: with a new connection
        # per request, hundreds of dead ones, the heap grown by 100 MB. A parser with no
        # callbacks leaves the connection to be freed now.
        self.parser = httptools.HttpRequestParser(NO_CALLBACKS)
        self._writable.set()
        self.balancer.clients.discard(self)
        if self.current is not None:
            self.current = None
            self.balancer.exchange_done()
        if self._linger is not None:
            self._linger.cancel()
        for exchange in self.pending:
            if isinstance(exchange, Exchange):
                exchange.waiting = False
                if exchange.slot is None:
                    exchange.body.close()
        self.pending.clear()
        if self.streaming is not None and self.streaming.slot is not None:
            upstream = self.streaming.slot.upstream
            if upstream is not None:
                upstream.transport.resume_reading()

    def _set_peer(self, host: str, port: int) -> None:
        self.peer = host.encode()
        self.peer_port = port
        self.client_address = _address(self.peer, port)
        self.trusted = self.balancer.trusts(host)

    def data_received(self, data: bytes) -> None:
        if self.closed or self._refused:
            return  # lingering after a refusal: discard
        if self._proxy_header is not None:
            data = self._proxy_received(data)
            if not data:
                return
        try:
            if CHECK_HEADS and not self._in_body:
                self._check_head(data)
            self.parser.feed_data(data)
        except BadRequest as refused:
            self._refuse(refused)
        except httptools.HttpParserUpgrade:
            self._refuse(BadRequest(501, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._refuse(cause)
            else:
                self._refuse(BadRequest(400, f"malformed request: {exc}"))

    def _proxy_received(self, data: bytes) -> bytes:
        """The PROXY protocol header that a load balancer in front sends first: the real
        client's address replaces the peer's. Returns what follows it; malformed → close."""
        assert self._proxy_header is not None
        buffered = self._proxy_header + data
        try:
            info, used = proxyproto.parse(buffered)
        except proxyproto.ProxyHeaderError as exc:
            log.info("closing a connection with a bad PROXY protocol header: %s", exc)
            self.balancer.stats["bad_proxy_header"] += 1
            self.closed = True
            self.transport.abort()
            return b""
        if not used:
            self._proxy_header = buffered
            return b""
        self._proxy_header = None
        if info is not None and info.source is not None:
            self._set_peer(*info.source)
        return buffered[used:]

    def _check_head(self, data: bytes) -> None:
        """Refuse bare LF and obs-fold in a request head, whatever the parser tolerates.

        llhttp (httptools ≥ 0.2) rejects both; Debian 12's httptools 0.1.1 (http-parser)
        accepts them silently, and two parsers that read a head differently are how request
        smuggling starts. Checked on the raw bytes, before the parser sees them, and only
        with a parser that does not refuse them itself (CHECK_HEADS).
        """
        head = self._head_tail + data
        end = head.find(b"\r\n\r\n")
        if LAX_HEAD.search(head if end < 0 else head[: end + 4]):
            raise BadRequest(400, "bare LF or obs-fold in the request head")
        self._head_tail = head[-3:] if end < 0 else b""

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.streaming is not None and self.streaming.slot is not None:
            upstream = self.streaming.slot.upstream
            if upstream is not None:
                upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self.streaming is not None and self.streaming.slot is not None:
            upstream = self.streaming.slot.upstream
            if upstream is not None:
                upstream.transport.resume_reading()

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._host = b""
        self._headers = []
        self._header_bytes = 0
        self._body = Body()
        self._reading = True
        self.deadline = self.loop.time() + self.options.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.options.max_header_bytes:
            raise BadRequest(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.options.max_header_bytes:
            raise BadRequest(431, "header section too large")
        if CHECK_HEADS:  # a lax parser: see _check_head (find(): `in` on bytes is slower)
            if value.find(b"\r") >= 0 or value.find(b"\n") >= 0:
                raise BadRequest(400, "obs-fold or bare line break in a header value")
            if name.find(b" ") >= 0 or name.find(b"\t") >= 0:  # "Content-Length : 3"
                raise BadRequest(400, "white space in a header name")
        name = name.lower()
        if name == b"host":
            self._host = value
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        lengths = 0
        chunked = expect = False
        for name, value in self._headers:
            if name == b"content-length":
                lengths += 1
                if not value.isdigit():
                    raise BadRequest(400, "invalid Content-Length")
                if int(value) > self.options.max_body:
                    raise BadRequest(413, "request body too large")
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise BadRequest(417, "unsupported expectation")
                expect = True
        if lengths > 1:
            raise BadRequest(400, "more than one Content-Length")
        if lengths and chunked:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        self.deadline = self.loop.time() + self.options.body_timeout
        if expect and self.current is None and not self.pending:
            self.transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        self.deadline = self.loop.time() + self.options.body_timeout  # between two reads
        self._body.append(chunk)
        if self._body.size > self.options.max_body:
            raise BadRequest(413, "request body too large")

    def on_message_complete(self) -> None:
        parser = self.parser
        self._reading = False
        self._in_body = False
        self.deadline = 0.0
        method = parser.get_method().decode("ascii")
        self._request_id = ""
        host = self._host
        # The balancer's own endpoints need no request for a worker (unless a trusted proxy
        # sent an X-Request-Id to keep: that comes out of the same pass over the headers).
        local = ((method == "GET" or method == "HEAD") and not self.trusted
                 and self._url.partition(b"?")[0] in self.balancer.local_paths)
        head = b"" if local else self._upstream_head(method)
        exchange = Exchange(self, method, self._url, head, self._body,
                            parser.should_keep_alive(), self._request_id or new_request_id(),
                            self.loop.time())
        exchange.host = host
        # A keep-alive client repeats its Host: one comparison, while the registry is as it was.
        hosts = self.balancer.hosts
        if host != self._allowed_host or hosts.generation != self._allowed_generation:
            if hosts.allows(host):
                self._allowed_host, self._allowed_generation = host, hosts.generation
            elif not host and parser.get_http_version() == "1.1":
                raise BadRequest(400, "no Host header")
            else:
                exchange.unknown_host = True
        if self.current is not None or self.pending:
            self.pending.append(exchange)  # pipelined: answered in order
            self.transport.pause_reading()
        else:
            self._start(exchange)

    # -- requests ----------------------------------------------------------------------------
    def _upstream_head(self, method: str) -> bytes:
        """The request as the worker gets it: our own headers, none of the client's Rip-*."""
        url = self._url
        parts = [method.encode(), b" ", url, b" HTTP/1.1\r\n"]
        host = self._host
        drop: frozenset[bytes] | set[bytes] = HOP_BY_HOP
        forwarded: dict[bytes, bytes] = {}
        for name, value in self._headers:
            if name == b"connection":  # headers it names are hop-by-hop too
                drop = HOP_BY_HOP | {t.strip().lower() for t in value.split(b",")}
        for name, value in self._headers:
            if name in drop or name in OWN_REQUEST_HEADERS or name.startswith(b"rip-"):
                if self.trusted and name in OWN_REQUEST_HEADERS:
                    forwarded[name] = value
                continue
            parts += (name, b": ", value, b"\r\n")
        client_for = self.peer
        proto = self.scheme
        client = self.client_address
        if forwarded:  # from a trusted proxy: its view of the client wins
            if b"x-forwarded-for" in forwarded:
                chain = forwarded[b"x-forwarded-for"]
                client_for = chain + b", " + self.peer
                client = self.balancer.client_from_chain(chain) or client
            proto = forwarded.get(b"x-forwarded-proto", proto)
            host = forwarded.get(b"x-forwarded-host", host)
            request_id = forwarded.get(b"x-request-id", b"")
            if 0 < len(request_id) <= 200 and request_id.isascii() and b" " not in request_id:
                self._request_id = request_id.decode()
        # rip-client: the client's address as the worker shows it to the app (REMOTE_ADDR,
        # ASGI client); a Rip-* header, so no client can set it.
        parts += (b"x-forwarded-for: ", client_for, b"\r\nx-forwarded-proto: ", proto,
                  b"\r\nrip-client: ", client, b"\r\n")
        if host:
            parts += (b"x-forwarded-host: ", host, b"\r\n")
        size = self._body.size
        if size or not (method == "GET" or method == "HEAD"):  # "no body" needs no header
            parts += (b"content-length: %d\r\n" % size,)
        return b"".join(parts)

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        balancer = self.balancer
        balancer.in_flight += 1
        if exchange.method == "GET" or exchange.method == "HEAD":
            path = exchange.target.partition(b"?")[0]
            status_path, server_path = balancer.local_paths
            if path == status_path:
                self._answer_status(exchange)
                return
            if path == server_path:
                self._answer(exchange, 200, b"ok\n")
                return
        if exchange.unknown_host:
            self._answer(exchange, 404, b"404 unknown host\n")
            return
        if self.redirect_port:
            self._redirect(exchange)
            return
        # The request id goes in last: it is only known now that the request is complete.
        exchange.head += b"x-request-id: %s\r\n\r\n" % exchange.request_id.encode()
        balancer.submit(exchange)

    def _redirect(self, exchange: Exchange) -> None:
        """301 to the same host and path on HTTPS."""
        host = exchange.host
        host = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        port = b"" if self.redirect_port == 443 else b":%d" % self.redirect_port
        target = exchange.target if exchange.target.startswith(b"/") else b"/"
        location = b"https://" + host + port + target
        self._answer(exchange, 301, b"301 moved to " + location + b"\n",
                     extra=b"location: " + location + b"\r\n")

    def _answer_status(self, exchange: Exchange) -> None:
        status = self.balancer.status()
        code = 200 if status["status"] == "healthy" else 503
        self._answer(exchange, code, json.dumps(status).encode() + b"\n", b"application/json")

    def _answer(self, exchange: Exchange, code: int, body: bytes,
                content_type: bytes = b"text/plain; charset=utf-8", extra: bytes = b"") -> None:
        head_only = exchange.method == "HEAD"
        data = b"".join((
            status_line(code),
            b"content-type: ", content_type, b"\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: ", exchange.request_id.encode(), b"\r\n",
            extra, self.extra,
            b"" if exchange.keep_alive else b"connection: close\r\n",
            b"\r\n",
            b"" if head_only else body,
        ))
        self.transport.write(data)
        self._finish(exchange, code, 0 if head_only else len(body))

    # -- responses (called by the balancer) --------------------------------------------------
    def respond(self, exchange: Exchange, response: Response) -> None:
        if self.closed or exchange is not self.current:
            response.body.close()
            exchange.body.close()
            return
        status = response.status
        body = response.body
        if response.head:  # passed on as the worker wrote it, with our fields added
            parts = [response.head, b"x-request-id: ", exchange.request_id.encode(), b"\r\n",
                     self.extra, b"" if exchange.keep_alive else b"connection: close\r\n",
                     b"\r\n"]
            self._send_response(exchange, parts, body, status, False)
            return
        head_only = exchange.method == "HEAD" or status in (204, 304) or status < 200
        parts = [status_line(status)]
        for name, value in response.headers:
            if name.startswith(b"rip-") or (name in RESPONSE_DROP and not (
                    head_only and name == b"content-length")):
                continue
            parts += (name, b": ", value, b"\r\n")
        if not head_only:
            parts.append(b"content-length: %d\r\n" % body.size)
        parts += (b"x-request-id: ", exchange.request_id.encode(), b"\r\n", self.extra)
        if not exchange.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._send_response(exchange, parts, body, status, head_only)

    def _send_response(self, exchange: Exchange, parts: list[bytes], body: Body, status: int,
                       head_only: bool) -> None:
        sent = 0 if head_only else body.size
        if head_only or body.in_memory:
            if not head_only:
                parts.append(body.read_all())
            self.transport.write(b"".join(parts))
            body.close()
            self._finish(exchange, status, sent)
        else:
            self.transport.write(b"".join(parts))
            self.loop.create_task(self._send_spooled(exchange, body, status))

    async def _send_spooled(self, exchange: Exchange, body: Body, status: int) -> None:
        """A large response leaves its temporary file only as fast as the client reads."""
        try:
            for chunk in body.chunks():
                if self.closed:
                    return
                self.transport.write(chunk)
                await self._writable.wait()
        finally:
            body.close()
        self._finish(exchange, status, body.size)

    def respond_error(self, exchange: Exchange, status: int, why: str) -> None:
        if self.closed or exchange is not self.current:
            exchange.body.close()
            return
        log.info("%s %s: %d (%s)", exchange.method, exchange.target.decode("latin-1"),
                 status, why)
        body = b"%d %s\n" % (status, why.encode())
        self._answer(exchange, status, body)

    def stream_start(self, exchange: Exchange, response: Response) -> None:
        """X-Accel-Buffering: no — headers now, then each piece as the worker sends it."""
        if self.closed or exchange is not self.current:
            return
        self.streaming = exchange
        parts = [status_line(response.status)]
        has_length = False
        for name, value in response.headers:
            if name == b"content-length":
                has_length = True
            elif name.startswith(b"rip-") or name in RESPONSE_DROP:
                continue
            parts += (name, b": ", value, b"\r\n")
        self._stream_chunked = not has_length and exchange.method != "HEAD"
        if has_length:
            parts += [(b"content-length: " + v + b"\r\n")
                      for n, v in response.headers if n == b"content-length"][:1]
        if self._stream_chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts += (b"x-request-id: ", exchange.request_id.encode(), b"\r\n", self.extra)
        if not exchange.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def stream_body(self, exchange: Exchange, chunk: bytes) -> None:
        if self.closed or self.streaming is not exchange or not chunk:
            return
        if self._stream_chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.transport.write(chunk)

    def stream_end(self, exchange: Exchange) -> None:
        if self.closed or self.streaming is not exchange:
            return
        if self._stream_chunked:
            self.transport.write(b"0\r\n\r\n")
        self.streaming = None
        self._finish(exchange, 200, -1)

    def abort(self) -> None:
        """The response broke after bytes reached the client: only closing can tell it."""
        self.streaming = None
        self.closed = True
        self.transport.close()

    # -- after a response ----------------------------------------------------------------------
    def _finish(self, exchange: Exchange, status: int, sent: int) -> None:
        exchange.body.close()
        balancer = self.balancer
        seconds = self.loop.time() - exchange.started
        balancer.metrics.request(status, seconds)
        balancer.access_log.record(exchange, status, sent, seconds)
        self.current = None
        self.balancer.exchange_done()
        if not exchange.keep_alive or not self.balancer.accepting:
            self.closed = True
            self.transport.close()
            return
        while self.pending and self.current is None:
            item = self.pending.popleft()
            if isinstance(item, BadRequest):
                self._refuse(item)
                return
            self._start(item)
        if self.current is None:
            self.transport.resume_reading()
            if not self._reading:
                self.deadline = self.loop.time() + self.options.keepalive_timeout

    def timed_out(self) -> None:
        """Called by the sweeper: a slow client (408) or an idle keep-alive connection."""
        self.deadline = 0.0
        if self._reading and self.current is None:
            self._refuse(BadRequest(408, "request not received in time"))
        elif self.current is None:
            self.closed = True
            self.transport.close()

    def _refuse(self, exc: BadRequest) -> None:
        """Answer a bad request and close, lingering so the client can read the answer."""
        if self.current is not None:
            self.pending.append(exc)
            self.transport.pause_reading()
            self._refused = True
            return
        self._refused = True
        self.deadline = 0.0
        log.info("refused a request with %d: %s", exc.status, exc)
        self.transport.write(simple_response(exc.status, close=True))
        self.balancer.stats[f"refused_{exc.status}"] += 1
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def close_if_idle(self) -> None:
        if self.current is None and not self._reading:
            self.closed = True
            self.transport.close()


class ProxyThenTLS(asyncio.Protocol):
    """A PROXY protocol header, then TLS on the same connection (HAProxy's `send-proxy` in
    front of an HTTPS listener). The handshake may start only after the header, so instead of
    the server's own TLS, asyncio's TLS protocol is put under the client connection here, and
    whatever arrived after the header (the start of the ClientHello) is handed to it."""

    transport: asyncio.Transport

    def __init__(self, balancer: Balancer, context: ssl.SSLContext) -> None:
        self.balancer = balancer
        self.context = context
        self.received = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._timer = self.balancer.loop.call_later(self.balancer.options.header_timeout,
                                                    self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.received += data
        try:
            info, used = proxyproto.parse(self.received)
        except proxyproto.ProxyHeaderError as exc:
            log.info("closing a connection with a bad PROXY protocol header: %s", exc)
            self.balancer.stats["bad_proxy_header"] += 1
            self.transport.abort()
            return
        if not used:
            return
        if self._timer is not None:
            self._timer.cancel()
        client = ClientConnection(self.balancer, b"https")
        if info is not None and info.source is not None:
            client.proxied_peer = info.source
        layer = asyncio.sslproto.SSLProtocol(
            self.balancer.loop, client, self.context, None,  # type: ignore[arg-type]
            server_side=True,
            ssl_handshake_timeout=self.balancer.options.header_timeout)  # type: ignore[arg-type]
        self.transport.set_protocol(layer)
        layer.connection_made(self.transport)
        rest = memoryview(self.received)[used:]
        while rest:
            buffer = layer.get_buffer(len(rest))
            size = min(len(buffer), len(rest))
            buffer[:size] = rest[:size]
            layer.buffer_updated(size)
            rest = rest[size:]
