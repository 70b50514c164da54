"""A client connection: parse, check and complete each request, then answer them in order.

A request is read whole (body included, spooled to a file when large) before a worker is chosen,
so a slow client never holds a worker; the response goes out as the worker sends it, and what
the client cannot take yet is spooled, so a slow reader never holds one either. Framing that two
parsers could read differently (Content-Length with Transfer-Encoding, two Content-Lengths,
obs-fold, two Host fields, …) is refused with 400 and the connection closes.

The connection's own state (what it is reading):

    IDLE ──▶ HEAD ──▶ BODY ──▶ IDLE …     (a keep-alive connection, request after request)
      │        │        │
      └────────┴────────┴──▶ ENDED   no more requests are read (Connection: close, the client
      │                              half-closed, a protocol upgrade); answers still go out
      └──────────────────────▶ LINGER  refused: the answer is out, input is discarded a moment
    ENDED ──▶ TUNNEL   a WebSocket: bytes relayed both ways (tunnel.py)
    any ──▶ CLOSED

Its requests are Exchanges (exchange.py) in `exchanges`, answered in order: only the first one is
ever past PIPELINED. A refusal that comes while earlier requests are still being answered waits
in the same line and is answered in its turn. No I/O happens here but through the transport,
and no time but the balancer's clock.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from ripsvc import logs
from ripsvc.balancer import proxyproto
from ripsvc.balancer.compress import Compression
from ripsvc.balancer.exchange import DONE, FLUSHING, PIPELINED, STREAMING, WAITING, Exchange
from ripsvc.balancer.static import Mount, Reply, StaticFiles, socket_of
from ripsvc.balancer.tunnel import CLOSED as TUNNEL_CLOSED
from ripsvc.balancer.upstream import header_fields
from ripsvc.body import Body, Spool
from ripsvc.http11 import NO_CALLBACKS, simple_response, status_body, status_line

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer
    from ripsvc.balancer.tunnel import Tunnel

log = logs.get("balancer.client")

IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
ENDED: Final = 3
LINGER: Final = 4
CLOSED: Final = 5
TUNNEL: Final = 6
NAMES = ("idle", "head", "body", "ended", "linger", "closed", "tunnel")

#: Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded in either direction.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
#: Request headers the balancer sets itself, whatever the client sent.
OWN_REQUEST_HEADERS = frozenset({b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
                                 b"x-forwarded-host", b"content-length", b"expect",
                                 b"x-request-start"})
RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"x-accel-buffering"}
LINGER_SECONDS = 2.0
#: What a client reads when the balancer answers for a worker it could not get an answer from.
ERROR_BODIES: Final = {status: status_body(status) for status in (502, 503, 504)}
#: Complete requests a client may have waiting on one connection before reading pauses.
PIPELINE_DEPTH = 8
#: A response spooled beyond this holds its worker until the client catches up (nginx's
#: proxy_max_temp_file_size is the same).
MAX_SPOOL = 1 << 30
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


class Client:
    """One client connection on a listener: plain HTTP, HTTPS (`scheme` b"https", TLS done by
    the transport), or a redirect listener (`redirect_port`: every request gets 301 there).
    An asyncio protocol: the transport is its only I/O."""

    transport: Any  # asyncio.Transport, or anything with its write/close/pause methods

    def __init__(self, balancer: Balancer, scheme: bytes = b"http", redirect_port: int = 0,
                 proxy_protocol: bool = False) -> None:
        # global
        self.balancer = balancer
        self.options = balancer.options
        self.clock = balancer.clock
        self.scheme = scheme
        self.redirect_port = redirect_port
        #: Headers added to every response on this listener (HSTS on HTTPS).
        self.extra = balancer.hsts_header if scheme == b"https" else b""
        #: Static mounts and compression (None: not configured, nothing done per request).
        self.static = StaticFiles.of(self.options)
        self.compression = Compression.of(self.options)
        # per connection
        self.state = IDLE
        self.since = self.clock()  # when the state's clock started (idle, head, body, linger)
        self.parser = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange | BadRequest] = deque()  # answered in this order
        self.reading = True  # False while reading is paused (too many requests waiting)
        self.writable = True  # False while the transport holds more than it wants
        self.paused_at = 0.0
        self.peer = b"unix"
        self.peer_port = 0
        self.client_address = b"unix:0"  # what Rip-Client tells the worker
        self.local_address = b"unix:0"  # what Rip-Server tells it: the listener's address
        self.proxied_peer: tuple[str, int] | None = None  # from a PROXY header before TLS
        self.trusted = False  # a proxy in front whose X-Forwarded-* and X-Request-Id we keep
        #: Bytes of a PROXY protocol header still being received (None: none expected).
        self._proxy_header: bytes | None = b"" if proxy_protocol else None
        self._out: list[bytes] = []  # response bytes of this turn, written at once by flush
        self._advancing = False
        self._eof_probes = 0  # interim responses written since the client's EOF
        self.tunnel: Tunnel | None = None  # a WebSocket's way to its worker (TUNNEL)
        self._early = b""  # bytes after a WebSocket's upgrade request, before its answer
        self._sendfile = -2  # the socket's descriptor for sendfile (-1: TLS; -2: not known yet)
        # per request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body = Body()
        self._line = b""  # the start of a request line not complete yet (_check_line)
        self._head_tail = b""  # the end of the previous read, for _check_head
        self._host = b""
        self._hosts = 0
        self._upgrade = False
        self._says_connection = False  # the request has a Connection field
        self._upgrade_to = b""  # its Upgrade field, lower-cased
        self._upgrade_body = 0  # body bytes to read by hand after an upgrade request
        self._upgraded: Exchange | None = None
        self._request_id = ""  # kept from a trusted proxy
        self._allowed_host: bytes | None = None  # the last Host found in the registry
        self._allowed_generation = -1

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if self.proxied_peer is not None:
            self._set_peer(*self.proxied_peer)
        elif isinstance(peer, tuple):
            self._set_peer(str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self.local_address = _address(str(local[0]).encode(), int(local[1]))
        self.since = self.clock()
        self.balancer.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        # The parser holds this connection's callbacks, a cycle that only the cyclic garbage
        # collector would break, keeping the transport with it (over TLS, uvloop's 256 KB
        # buffer and OpenSSL's state) for as long as it takes to run: with a new connection
        # per request, hundreds of dead ones, the heap grown by 100 MB. A parser with no
        # callbacks leaves the connection to be freed now.
        self.parser = httptools.HttpRequestParser(NO_CALLBACKS)
        self.balancer.clients.discard(self)
        self._body.close()
        self._out.clear()
        exchanges = self.exchanges
        while exchanges:
            item = exchanges.popleft()
            if isinstance(item, Exchange):
                if item.started:
                    self.balancer.client_gone(item)
                item.release_buffers()
        if self._upgraded is not None:
            self._upgraded.release_buffers()
            self._upgraded = None

    def eof_received(self) -> bool:
        """The client will send no more: a half-close, or the first half of a close. Its
        requests still get their answers (as nginx and HAProxy do), then the connection
        closes; True keeps the transport open for them.

        Which of the two it was shows only when we write: to a client that closed for good,
        its kernel answers with a reset, which ends the connection and tells the app its
        client left (ASGI http.disconnect). So an HTTP/1.1 client whose request waits for its
        response gets an interim `100 Continue`, which HTTP/1.1 clients must read and skip
        (RFC 9110 §15.2), now and once more at the next sweep (the write that meets the
        reset fails). A WebSocket's client is done: the connection ends."""
        if self.tunnel is not None:
            return False
        if self.state < ENDED:
            if self.state != IDLE:
                self._body.close()  # a request that can no longer be complete
            self.state = ENDED
        self._probe_eof()
        return bool(self.exchanges)

    def _probe_eof(self) -> None:
        exchange = self._current()
        if (exchange is not None and exchange.state <= WAITING and self._eof_probes < 2
                and not exchange.http10 and self.scheme == b"http"):
            self._eof_probes += 1
            self.transport.write(CONTINUE)

    def _set_peer(self, host: str, port: int) -> None:
        self.peer = host.encode()
        self.peer_port = port
        self.client_address = _address(self.peer, port)
        self.trusted = self.balancer.trusts(host)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:  # a WebSocket (or its refusal): the worker's business
            tunnel.to_worker(data)
            return
        if self.state >= ENDED:
            if self._upgrade_body and self.state == ENDED:
                self._upgrade_body_received(data)
            return  # nothing more is read: discard
        if self._proxy_header is not None:
            data = self._proxy_received(data)
            if not data:
                return
        try:
            self._parse(data)
        except Exception as exc:  # a bug of ours: logged, and only this connection pays
            self.balancer.internal_error(exc, "a client connection")
            self.abort()
            return
        self._advance()

    def _parse(self, data: bytes) -> None:
        try:
            if self.state == IDLE or self._line:
                self._check_line(data)
            if CHECK_HEADS and self.state != BODY:
                self._check_head(data)
            self.parser.feed_data(data)
        except BadRequest as refused:
            self._refuse(refused)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_received(data, int(upgrade.args[0]) if upgrade.args else len(data))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._refuse(cause)
            elif cause is not None and not isinstance(cause, httptools.HttpParserError):
                raise cause from None  # raised by our own callback code: a bug, not the client
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
            self.abort()
            return b""
        if not used:
            self._proxy_header = buffered
            return b""
        self._proxy_header = None
        if info is not None and info.source is not None:
            self._set_peer(*info.source)
        return buffered[used:]

    def _check_line(self, data: bytes) -> None:
        """A request line has single spaces around its target (RFC 9112 §3): the parser
        takes `POST  /x` too, so it is checked here on the bytes. Checked where a request
        starts a read, which is where one starts unless a client pipelines; the target of a
        pipelined one is re-written for the worker from what the parser understood anyway.
        One search for two spaces in a row first: most reads have none anywhere."""
        if not self._line and data.find(b"  ") < 0:
            return
        line = self._line + data if self._line else data
        start = 0
        while line.startswith(b"\r\n", start):  # empty lines before a request are allowed
            start += 2
        end = line.find(b"\n", start)
        if end < 0:
            self._line = line if len(line) <= self.options.max_header_bytes else b""
            return
        self._line = b""
        if line.count(b" ", start, end) != 2:
            raise BadRequest(400, "malformed request line")

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
        self.writable = False
        tunnel = self.tunnel
        if tunnel is not None:  # the client reads slower than the worker sends: back-pressure
            if tunnel.state != TUNNEL_CLOSED:
                tunnel.transport.pause_reading()
            return
        self.paused_at = self.clock()
        exchange = self._current()
        if exchange is not None and exchange.unbuffered and exchange.state == STREAMING:
            self.balancer.hold_worker(exchange, True)

    def resume_writing(self) -> None:
        self.writable = True
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.state != TUNNEL_CLOSED:
                tunnel.transport.resume_reading()
            return
        self.paused_at = 0.0
        exchange = self._current()
        if exchange is None:
            return
        self._pump(exchange)
        if exchange.unbuffered and exchange.state == STREAMING:
            self.balancer.hold_worker(exchange, False)

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.state = HEAD
        self.since = self.clock()
        self._url = b""
        self._host = b""
        self._hosts = 0
        self._headers = []
        self._header_bytes = 0
        self._body = Body()
        self._upgrade = False
        self._upgrade_to = b""
        self._says_connection = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.options.max_header_bytes:
            raise BadRequest(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.options.max_header_bytes:
            raise BadRequest(431, "header section too large")
        if self.state == BODY:
            return  # a trailer field: never a header field of the request (RFC 9110 §6.5.1)
        if CHECK_HEADS:  # a lax parser: see _check_head (find(): `in` on bytes is slower)
            if value.find(b"\r") >= 0 or value.find(b"\n") >= 0:
                raise BadRequest(400, "obs-fold or bare line break in a header value")
            if name.find(b" ") >= 0 or name.find(b"\t") >= 0:  # "Content-Length : 3"
                raise BadRequest(400, "white space in a header name")
        name = name.lower()
        if name == b"connection":
            self._says_connection = True
        elif name == b"upgrade":
            self._upgrade_to = value.lower()
        elif name == b"host":
            self._hosts += 1
            if self._hosts > 1:  # RFC 9112 §3.2: which one would the app see?
                raise BadRequest(400, "more than one Host header")
            self._host = value
        elif name.find(b"_") >= 0:
            # X_Auth_User and X-Auth-User are one name to WSGI and to many frameworks: a
            # client could pass for what a proxy in front vouches for (nginx and gunicorn
            # drop these too).
            self.balancer.stats["underscore_header_dropped"] += 1
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.state = BODY  # its clock runs on from the head's: since is set by each body read
        lengths = 0
        length = 0
        chunked = expect = False
        for name, value in self._headers:
            if name == b"content-length":
                lengths += 1
                value = value.strip(b" \t")
                if not value.isdigit():
                    raise BadRequest(400, "invalid Content-Length")
                length = int(value)
                if length > self.options.max_body:
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
        parser = self.parser
        if parser.should_upgrade():
            # Served as plain HTTP/1.1 (as uvicorn does), and the connection ends after it;
            # the parser leaves a body of such a request to us (_upgrade_received).
            if chunked:
                raise BadRequest(400, "a chunked body with a protocol upgrade")
            self._upgrade = True
            self._upgrade_body = length
        # (RFC 9110 §10.1.1: an HTTP/1.0 client's Expect is ignored; it awaits no 100.)
        if (expect and not self.exchanges and not self._upgrade
                and self.parser.get_http_version() != "1.0"):
            self.transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        self.since = self.clock()  # the body timeout runs between two reads
        try:
            self._body.append(chunk)
        except OSError as exc:  # a full disk: say so once, and answer 507
            self.balancer.spool_failed(exc, "a request body")
            raise BadRequest(507, "no space to hold the request body") from None
        if self._body.size > self.options.max_body:
            raise BadRequest(413, "request body too large")

    def on_message_complete(self) -> None:
        parser = self.parser
        self.state = IDLE  # no clock: a connection answering a request is never idle
        method = parser.get_method().decode("ascii")
        self._request_id = ""
        host = self._host
        # The balancer's own endpoints need no request for a worker (unless a trusted proxy
        # sent an X-Request-Id to keep: that comes out of the same pass over the headers).
        local = ((method == "GET" or method == "HEAD") and not self.trusted
                 and self._url.partition(b"?")[0] in self.balancer.local_paths)
        websocket = self._websocket(method) if self._upgrade else 0
        mount: Mount | None = None
        static = self.static
        if static is not None and not local and not self._upgrade:
            mount = static.match(self._url)
        # A mount that does not fall back never needs the worker's request.
        head = b"" if local or (mount is not None and not mount.fallback) else \
            self._upstream_head(method, websocket == 1)
        keep_alive = parser.should_keep_alive()
        # HTTP/1.0 matters only to a keep-alive request that says so (its response must say
        # so too) and to one without Host: the version is asked for only then.
        http10 = (not keep_alive or self._says_connection) and parser.get_http_version() == "1.0"
        exchange = Exchange(self, method, self._url, head, self._body,
                            keep_alive and not self._upgrade,
                            self._request_id or new_request_id(), self.since)
        exchange.host = host
        exchange.http10 = http10
        if mount is not None:
            exchange.mount = mount
            exchange.fields = self._headers
        compression = self.compression
        if compression is not None and not http10:
            exchange.accept = compression.accepts(self._headers)
        # A keep-alive client repeats its Host: one comparison, while the registry is as it was.
        hosts = self.balancer.hosts
        if host != self._allowed_host or hosts.generation != self._allowed_generation:
            if hosts.allows(host):
                self._allowed_host, self._allowed_generation = host, hosts.generation
            elif not host and parser.get_http_version() != "1.0":
                raise BadRequest(400, "no Host header")
            else:
                exchange.unknown_host = True
        if self._upgrade:
            exchange.upgrade = True
            exchange.websocket = websocket
            self.state = ENDED
            if self._upgrade_body and method != "CONNECT":
                self._upgraded = exchange  # queued once its body is in (_upgrade_received)
                self.since = self.clock()  # body_timeout runs between two reads of it
                return
        elif not exchange.keep_alive:
            self.state = ENDED
        self.exchanges.append(exchange)
        if len(self.exchanges) >= PIPELINE_DEPTH and self.reading:
            self.reading = False
            self.transport.pause_reading()

    def _websocket(self, method: str) -> int:
        """A WebSocket upgrade the WebSocket workers are to serve: 1; a malformed one: the
        status that refuses it (400, or 426 for a version other than 13); else 0 (served as
        plain HTTP/1.1, by the app: what a WSGI app's users get, as under gunicorn)."""
        if self._upgrade_to.find(b"websocket") < 0 or not self.balancer.pool.websockets:
            return 0
        version = key = b""
        for name, value in self._headers:
            if name == b"sec-websocket-version":
                version = value.strip()
            elif name == b"sec-websocket-key":
                key = value.strip()
        if method != "GET" or self._upgrade_body or len(key) != 24:
            return 400
        if version != b"13":
            return 426
        return 1

    def _upgrade_received(self, data: bytes, offset: int) -> None:
        """After a request asking for a protocol upgrade the parser stops: what follows is
        the body it declared (read here by its Content-Length), then nothing we serve (a
        WebSocket's client should send nothing before the answer: if it does, it is relayed,
        not handed over, and its worker sees those bytes)."""
        if offset < len(data) and not self._upgrade_body:
            self._early = data[offset:]
        if self._upgraded is not None and self._upgrade_body:
            self._upgrade_body_received(data[offset:])

    def _upgrade_body_received(self, data: bytes) -> None:
        exchange = self._upgraded
        if exchange is None:
            return
        piece = data[:self._upgrade_body]
        self._upgrade_body -= len(piece)
        self.since = self.clock()
        try:
            exchange.body.append(piece)
        except OSError as exc:
            self.balancer.spool_failed(exc, "a request body")
            self._upgraded = None
            self._refuse(BadRequest(507, "no space to hold the request body"))
            return
        if not self._upgrade_body:
            self._upgraded = None
            self.exchanges.append(exchange)
            self._advance()

    # -- requests ----------------------------------------------------------------------------
    def _upstream_head(self, method: str, websocket: bool = False) -> bytes:
        """The request as the worker gets it: our own headers, none of the client's Rip-*;
        a WebSocket's keeps asking for the upgrade."""
        url = self._url
        parts = [method.encode(), b" ", url, b" HTTP/1.1\r\n"]
        host = self._host
        drop: frozenset[bytes] | set[bytes] = HOP_BY_HOP
        forwarded: dict[bytes, bytes] = {}
        for name, value in self._headers:
            if name == b"connection":  # headers it names are hop-by-hop too (but Host is
                # the request's own: without it the app would not know which site is asked)
                drop = HOP_BY_HOP | ({t.strip().lower() for t in value.split(b",")} - {b"host"})
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
            start = forwarded.get(b"x-request-start")
            if start is not None:  # the proxy in front saw the request first
                parts += (b"x-request-start: ", start, b"\r\n")
        # rip-client and rip-server: the client's address and the listener's as the worker
        # shows them to the app (REMOTE_ADDR, ASGI client and server); Rip-* headers, so no
        # client can set them.
        parts += (b"x-forwarded-for: ", client_for, b"\r\nx-forwarded-proto: ", proto,
                  b"\r\nrip-client: ", client, b"\r\nrip-server: ", self.local_address,
                  b"\r\n")
        if host:
            parts += (b"x-forwarded-host: ", host, b"\r\n")
        if websocket:
            parts.append(b"upgrade: websocket\r\nconnection: upgrade\r\n")
        size = self._upgrade_body if self._upgrade else self._body.size
        if size or not (method == "GET" or method == "HEAD"):  # "no body" needs no header
            parts += (b"content-length: %d\r\n" % size,)
        return b"".join(parts)

    @property
    def answering(self) -> bool:
        """Is a request of this connection being answered (taken up, not done)?"""
        return self._current() is not None

    def _current(self) -> Exchange | None:
        """The exchange being answered (the first in line, once taken up)."""
        if self.exchanges:
            first = self.exchanges[0]
            if isinstance(first, Exchange) and first.state != PIPELINED:
                return first
        return None

    def _advance(self) -> None:
        """Take up the next request in line when the one before it is done."""
        if self._advancing:
            return  # a request answered at once finishes inside _start: the loop goes on
        self._advancing = True
        try:
            exchanges = self.exchanges
            while exchanges and self.state != CLOSED:
                first = exchanges[0]
                if isinstance(first, BadRequest):
                    exchanges.popleft()
                    self._refuse_now(first)
                    break
                if first.state != PIPELINED:
                    break  # being answered
                self._start(first)
            if not exchanges and self.state == ENDED and self._upgraded is None:
                self._close()
            elif not self.reading and len(exchanges) < PIPELINE_DEPTH and self.state < ENDED:
                self.reading = True
                if self.state != IDLE:
                    self.since = self.clock()  # the head or body clock was stopped meanwhile
                self.transport.resume_reading()
        finally:
            self._advancing = False

    def _start(self, exchange: Exchange) -> None:
        balancer = self.balancer
        if exchange.method == "CONNECT":  # whatever its host: we are no proxy
            self._answer(exchange, 501, b"501 CONNECT is not supported\n")
            return
        if exchange.method == "GET" or exchange.method == "HEAD":
            path = exchange.target.partition(b"?")[0]
            status_path, server_path, ready_path = balancer.local_paths
            if path == status_path:
                self._answer_status(exchange)
                return
            if path == server_path:
                self._answer(exchange, 200, b"ok\n")
                return
            if path == ready_path:
                code, body = balancer.readiness()
                self._answer(exchange, code, body)
                return
        if exchange.unknown_host:
            self._answer(exchange, 404, b"404 unknown host\n")
            return
        if self.redirect_port:
            self._redirect(exchange)
            return
        mount = exchange.mount
        if mount is not None and self._serve_static(exchange, mount):
            return
        # The request id goes in last: it is only known now that the request is complete.
        # X-Request-Start (microseconds since the epoch, as APM agents read it: New Relic,
        # Datadog, Scout) tells the app how long its request waited before it ran, unless a
        # trusted proxy in front sent its own.
        head = exchange.head
        if self.trusted and head.find(b"\r\nx-request-start: ") >= 0:
            exchange.head = b"".join((head, b"x-request-id: ", exchange.request_id.encode(),
                                      b"\r\n\r\n"))
        else:
            exchange.head = b"".join((
                head, b"x-request-start: t=",
                str(int((exchange.received + balancer.wall_offset) * 1e6)).encode(),
                b"\r\nx-request-id: ", exchange.request_id.encode(), b"\r\n\r\n"))
        if exchange.websocket:
            if exchange.websocket == 426:
                exchange.note = "unsupported WebSocket version"
                self._answer(exchange, 426, b"426 WebSocket version 13 only\n",
                             extra=b"sec-websocket-version: 13\r\n")
            elif exchange.websocket != 1:
                exchange.note = "malformed WebSocket upgrade"
                self._answer(exchange, 400, b"400 malformed WebSocket upgrade\n")
            else:
                balancer.open_tunnel(exchange)
            return
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

    def _connection_field(self, exchange: Exchange) -> bytes:
        if not exchange.keep_alive or exchange.close_after or not self.balancer.accepting:
            exchange.keep_alive = False
            return b"connection: close\r\n"
        return b"connection: keep-alive\r\n" if exchange.http10 else b""

    def _answer(self, exchange: Exchange, code: int, body: bytes,
                content_type: bytes = b"text/plain; charset=utf-8", extra: bytes = b"") -> None:
        """A response of the balancer's own, in one piece."""
        head_only = exchange.head_only
        exchange.status = code
        exchange.sent = 0 if head_only else len(body)
        if self.state != CLOSED:
            self.transport.write(b"".join((
                status_line(code),
                b"content-type: ", content_type, b"\r\n",
                b"content-length: %d\r\n" % len(body),
                b"x-request-id: ", exchange.request_id.encode(), b"\r\n",
                extra, self.extra, self._connection_field(exchange), b"\r\n",
                b"" if head_only else body,
            )))
        self._finish(exchange)

    def answer_error(self, exchange: Exchange, status: int, why: str) -> None:
        """The balancer could not get a response for `exchange` (502, 503, 504): `why` goes
        to the log and the access log, the client gets the status's name only (a parser's
        words about the worker's response are nothing a client should read)."""
        log.info("%s %s: %d (%s)", exchange.method, exchange.target.decode("latin-1"),
                 status, why)
        exchange.note = why
        self._answer(exchange, status, ERROR_BODIES[status])

    # -- responses (called by the balancer) --------------------------------------------------
    def response_head(self, exchange: Exchange, status: int, head: bytes,
                      fields: list[tuple[bytes, bytes]] | None) -> None:
        """The head of the worker's response: `head` as the worker wrote it when it can go on
        as it is (upstream.passable), else its `fields`, from which ours is built."""
        exchange.status = status
        out = self._out
        if fields is None:  # one Content-Length frames the body, which passes as it comes
            if not exchange.accept:
                out += (head, b"x-request-id: ", exchange.request_id.encode(), b"\r\n",
                        self.extra, self._connection_field(exchange), b"\r\n")
                return
            # To be compressed, perhaps: its Content-Length would change.
            fields = header_fields(head.split(b"\r\n")[1:-1]) or []
        head_only = exchange.head_only or status in (204, 304)  # (never 1xx: upstream.py)
        exchange.head_only = head_only
        compression = self.compression
        if exchange.accept and not head_only and compression is not None:
            exchange.encoder, fields = compression.negotiate(exchange.accept, status, fields)
        out.append(status_line(status))
        lengths: list[bytes] = []
        chunked = False
        for name, value in fields:
            if name.startswith(b"rip-") or name in RESPONSE_DROP:
                if name == b"content-length":
                    lengths.append(value)
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"x-accel-buffering" and value.lower() == b"no":
                    exchange.unbuffered = True
                continue
            out += (name, b": ", value, b"\r\n")
        if len(lengths) == 1 and lengths[0].isdigit() and (head_only or not chunked):
            out += (b"content-length: ", lengths[0], b"\r\n")
        elif not head_only:  # the length is not known up front
            if exchange.http10:
                exchange.close_after = True  # an HTTP/1.0 client reads to the end
            else:
                exchange.chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
        out += (b"x-request-id: ", exchange.request_id.encode(), b"\r\n", self.extra,
                self._connection_field(exchange), b"\r\n")

    def response_body(self, exchange: Exchange, chunk: bytes) -> None:
        if exchange.head_only or not chunk:
            return
        encoder = exchange.encoder
        if encoder is not None:  # compressed and flushed piece by piece: streams go on
            chunk = encoder.compress(chunk)
            if not chunk:
                return
        exchange.sent += len(chunk)
        if exchange.chunked:
            self._out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self._out.append(chunk)

    def response_end(self, exchange: Exchange) -> None:
        """The worker's response is complete (the exchange is FLUSHING)."""
        encoder = exchange.encoder
        if encoder is not None:
            exchange.encoder = None
            tail = encoder.finish()
            exchange.sent += len(tail)
            self._out += (b"%x\r\n" % len(tail), tail, b"\r\n") if exchange.chunked else (tail,)
        if exchange.chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        if self.state != CLOSED and exchange.state == FLUSHING and (
                exchange.spool is None or not exchange.spool.size):
            self._finish(exchange)

    def flush(self) -> None:
        """Write this turn's response bytes in one go, or spool them behind what waits."""
        out = self._out
        if not out or self.state == CLOSED:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        exchange = self._current()
        spool = exchange.spool if exchange is not None else None
        if self.writable and (spool is None or not spool.size):
            self.transport.write(data)
            return
        if exchange is None or exchange.unbuffered:
            # Not spooled: this read's bytes wait in the transport, and the worker's further
            # bytes in the worker's socket (hold_worker stopped reading them).
            self.transport.write(data)
            return
        if spool is None:
            spool = exchange.spool = Spool()
        try:
            spool.append(data)
        except OSError as exc:
            self.balancer.spool_failed(exc, "a response for a slow client")
            exchange.note = "no space to spool the response"
            self.abort()
            return
        if spool.size > MAX_SPOOL and exchange.state == STREAMING:
            exchange.unbuffered = True  # enough on disk: the worker waits for the client now
            self.balancer.hold_worker(exchange, True)

    def _pump(self, exchange: Exchange) -> None:
        """The client reads again: what was spooled goes out, as much as it takes."""
        if exchange.file is not None:
            self.send_file(exchange)
            return
        spool = exchange.spool
        while spool is not None and spool.size and self.writable and self.state != CLOSED:
            try:
                data = spool.take()
            except OSError as exc:
                self.balancer.spool_failed(exc, "reading a spooled response")
                exchange.note = "the spooled response could not be read"
                self.abort()
                return
            self.transport.write(data)
        if exchange.state == FLUSHING and (spool is None or not spool.size):
            self._finish(exchange)

    # -- static files (static.py) ----------------------------------------------------------
    def _serve_static(self, exchange: Exchange, mount: Mount) -> bool:
        """Answer a request under a static mount; False: it is the app's (fallback)."""
        static = self.static
        fields = exchange.fields
        if static is None or fields is None:
            return False
        exchange.fields = None
        sock = self._sendfile
        if sock == -2:
            sock = self._sendfile = socket_of(self.transport) if self.scheme == b"http" else -1
        try:
            reply = static.serve(mount, exchange.method, exchange.target, fields, sock)
        except OSError as exc:  # the file could not be read
            log.warning("static %s: %s", exchange.target.decode("latin-1"), exc)
            exchange.note = f"static file: {exc}"
            reply = Reply(500, b"HTTP/1.1 500 Internal Server Error\r\n"
                          b"content-type: text/plain; charset=utf-8\r\n"
                          b"content-length: 26\r\n", b"500 Internal Server Error\n")
        if reply is None:
            return False
        exchange.worker_id = "static"
        exchange.status = reply.status
        head_only = exchange.head_only
        file = reply.file
        if head_only and file is not None:
            file.close()
            file = None
        body = b"" if head_only else reply.body
        exchange.sent = len(body)
        if self.state != CLOSED:
            self.transport.write(b"".join((
                reply.head, b"x-request-id: ", exchange.request_id.encode(), b"\r\n",
                self.extra, self._connection_field(exchange), b"\r\n", body)))
        if file is None or self.state == CLOSED:
            if file is not None:
                file.close()
            self._finish(exchange)
            return True
        exchange.file = file
        exchange.move(FLUSHING)
        self.send_file(exchange)
        return True

    def send_file(self, exchange: Exchange) -> None:
        """Send what the client takes now of a static file; the rest when it reads again
        (resume_writing), or in the event loop's next turn after a long burst."""
        file = exchange.file
        if file is None or self.state == CLOSED or exchange.state != FLUSHING:
            return
        try:
            done = file.send(self, exchange)
        except OSError as exc:
            log.warning("static %s: %s", exchange.target.decode("latin-1"), exc)
            exchange.note = f"static file: {exc.strerror or exc}"
            self.abort()  # the connection_lost that follows logs it
            return
        if done:
            self._finish(exchange)

    def early_bytes(self) -> bytes:
        early, self._early = self._early, b""
        return early

    @property
    def can_hand_over(self) -> bool:
        """Can this connection's socket be handed to a WebSocket worker (handoff.py)? On plain
        HTTP, when nothing of the client's came after its upgrade request and everything of
        the responses before it is out (the hand-over drops what the transport still holds:
        a pipelined upgrade behind a large response would cut that response short); else
        the balancer relays the WebSocket, as over HTTPS."""
        return (self.scheme == b"http" and not self._early
                and not self.transport.get_write_buffer_size())

    def handed_over(self, exchange: Exchange) -> None:
        """The socket is the WebSocket worker's now: logged as such, and let go of here."""
        exchange.status = 101
        exchange.note = f"handed to WebSocket worker {exchange.worker_id}"
        self.balancer.finished(exchange)
        exchange.release_buffers()
        self.exchanges.clear()
        self.state = CLOSED
        self.parser = httptools.HttpRequestParser(NO_CALLBACKS)
        self.balancer.clients.discard(self)
        self.transport.abort()  # our descriptor only: the worker has its own of the socket

    def upgraded(self, exchange: Exchange, tunnel: Tunnel, head: bytes, rest: bytes) -> None:
        """The WebSocket worker answered: a 101 (and from now on the connection carries the
        WebSocket's bytes both ways), or a refusal, passed on as it is until the worker ends
        the connection."""
        if self.state == CLOSED:
            return
        self.state = TUNNEL
        self.tunnel = tunnel
        self.transport.write(b"".join((head, b"x-request-id: ", exchange.request_id.encode(),
                                       b"\r\n", self.extra, b"\r\n", rest)))
        if not self.reading:
            self.reading = True
            self.transport.resume_reading()

    def tunnel_ended(self, exchange: Exchange, why: str) -> None:
        """The worker's side of a WebSocket ended: so does the client's, once what was
        written reaches it."""
        self.tunnel = None
        exchange.note = "" if exchange.status == 101 and not why else why
        self.balancer.finished(exchange)
        exchange.release_buffers()
        self.exchanges.clear()
        self._close()

    def broken(self, exchange: Exchange, why: str) -> None:
        """The response broke after its head went out: only the connection's end can tell
        the client (a short body, or no last chunk), as uvicorn and gunicorn do."""
        exchange.note = why
        spooled = exchange.spool is not None and exchange.spool.size
        if not spooled:
            self.flush()  # what did arrive goes out first
        self.balancer.finished(exchange)
        exchange.release_buffers()
        for item in self.exchanges:
            if isinstance(item, Exchange) and item is not exchange:
                item.release_buffers()
        self.exchanges.clear()
        if spooled:
            self.abort()
        else:
            self._close()

    # -- after a response ----------------------------------------------------------------------
    def _finish(self, exchange: Exchange) -> None:
        """The last byte of `exchange`'s answer is handed to the transport: log it, and take
        up the next request (or close, when this was the last)."""
        if exchange.state == DONE:
            return
        now = self.balancer.finished(exchange)
        exchange.release_buffers()
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if not exchange.keep_alive or not self.balancer.accepting:
            self._close()
            return
        if not self.exchanges:
            self.since = now  # the keep-alive clock starts
        self._advance()

    def timed_out(self, now: float) -> None:
        """The balancer's sweeper: is one of this connection's clocks out? (A WebSocket's
        are the worker's: pings, and its graceful stop.)"""
        state = self.state
        if state == TUNNEL:
            return
        options = self.options
        if not self.writable and self.paused_at and now - self.paused_at > options.send_timeout:
            log.info("closing a connection whose client stopped reading for %.0f s",
                     options.send_timeout)
            self.balancer.stats["send_timeout"] += 1
            exchange = self._current()
            if exchange is not None:
                exchange.note = "send timeout: the client stopped reading"
            self.abort()
        elif state == HEAD and self.reading:
            if now - self.since > options.header_timeout:
                self._refuse(BadRequest(408, "request head not received in time"))
                self._advance()
        elif (state == BODY and self.reading) or (state == ENDED and self._upgrade_body
                                                  and self._upgraded is not None):
            # (ENDED: the body of a request that asked for an upgrade, read by its length.)
            if now - self.since > options.body_timeout:
                self._refuse(BadRequest(408, "request body not received in time"))
                self._advance()
        elif state == IDLE and not self.exchanges:
            if now - self.since > options.keepalive_timeout:
                self._close()
        elif state == LINGER and now - self.since > LINGER_SECONDS:
            self._close()
        elif self._eof_probes == 1:
            self._probe_eof()

    def _refuse(self, exc: BadRequest) -> None:
        """A bad request: answered once the requests before it are (then the connection
        closes); nothing after it is read."""
        self._body.close()
        self.state = ENDED
        self._upgraded = None
        self._upgrade_body = 0
        self.exchanges.append(exc)

    def _refuse_now(self, exc: BadRequest) -> None:
        """Answer a bad request and close, lingering so the client can read the answer."""
        log.info("refused a request with %d: %s", exc.status, exc)
        self.balancer.stats[f"refused_{exc.status}"] += 1
        self.exchanges.clear()
        self.state = LINGER
        self.since = self.clock()
        transport = self.transport
        transport.write(simple_response(exc.status, close=True))
        if transport.can_write_eof():
            transport.write_eof()
        if not self.reading:
            self.reading = True
            transport.resume_reading()  # read and discard until the client closes

    def close_if_idle(self) -> None:
        """The balancer is stopping: an idle connection closes now, a busy one after its
        response (its exchanges are told to close)."""
        if not self.exchanges and self.state != HEAD and self.state != BODY:
            self._close()
        for item in self.exchanges:
            if isinstance(item, Exchange):
                item.keep_alive = False

    def _close(self) -> None:
        """Close after what was written (the transport flushes it first)."""
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping what was not written: a response broke after its head went
        out, the client stopped reading, or something of ours failed."""
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.abort()


def spool_directory() -> str:
    """Where request bodies and slow clients' responses are spooled (for the log)."""
    return tempfile.gettempdir()
