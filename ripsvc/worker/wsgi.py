"""Running a WSGI (PEP 3333) app.

The app runs on the event loop's own thread, as gunicorn's sync worker runs it on its only
one: the worker serves one request at a time, so nothing else needs the loop while the app
works, and the two thread hand-offs per request of running it elsewhere were most of what a
WSGI request cost around the app (docs/performance.md). What the loop did meanwhile is done
otherwise:
- its responses are written as they come (PEP 3333 forbids holding a block back), straight to
  the socket, waiting for it when it is full (HttpConnection.blocking): the loop, which would
  flush a transport's buffer, does not run meanwhile;
- the watchdog is pinged by a small thread while the app holds the loop (sd.start_watchdog:
  `worker.app_holds_loop`), so a long request is not a stalled loop; a request that never
  ends is the balancer's to report (response_timeout), as before;
- signals wait until the app returns (a graceful stop lets the request finish anyway);
- the request body is complete before the app is called (the connection dispatches a request
  once its body is in), so reading wsgi.input never waits for the loop;
- while the app runs, no event loop is running in this thread as far as the app can tell, so
  that asyncio.run() or asgiref's async_to_sync() inside a view work as under gunicorn.
"""

from __future__ import annotations

import sys
from asyncio import events
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ripsvc import logs
from ripsvc.http11 import field_lines
from ripsvc.worker.request import Request, as_bytes

if TYPE_CHECKING:
    from ripsvc.worker.http import HttpConnection

log = logs.get("worker.wsgi")

#: Iterators over a body already in memory: read at once, sent with a Content-Length (Django's
#: HttpResponse iterates over its list of pieces).
_IN_MEMORY: tuple[type, ...] = (type(iter([])), type(iter(())))
_SPECIAL_HEADERS = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def split_host(host: str) -> tuple[str, str]:
    """Split a Host header into name and port ("" when absent), IPv6 literals included."""
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            rest = host[end + 1 :]
            return host[: end + 1], rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port


def server_address(request: Request, conn: HttpConnection, host: str | None) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT as gunicorn gives them: the address and port the client
    connected to (the balancer's Rip-Server header, or this socket's), not what the client
    wrote in its Host header, which an app reads as HTTP_HOST."""
    server = request.server or conn.server
    if server is not None:
        return server[0], str(server[1])
    # Straight to our Unix socket, which PEP 3333 has no words for: like gunicorn, the Host
    # header names the server (a proxy of one's own sets it), else the socket's path. Unlike
    # gunicorn, the port is never empty: PEP 3333 says it cannot be.
    default_port = "443" if request.scheme == "https" else "80"
    if host:
        name, port = split_host(host)
        return name, port or default_port
    path = conn.transport.get_extra_info("sockname")
    return (path if isinstance(path, str) and path else "localhost"), default_port


class FileWrapper:
    """`wsgi.file_wrapper`: iterates a file-like object in blocks and closes it afterwards."""

    # `filelike` is the app's: Any, so that the compiled build does not check that its read()
    # returns bytes, where the interpreted one would not; the pieces are checked as any
    # body's pieces are (as_bytes), in both.
    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[object]:
        while block := self.filelike.read(self.blksize):
            yield block


class WsgiHost:
    kind = "wsgi"

    def __init__(self, app: Callable[..., Iterable[object]]) -> None:
        self.app = app

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def handle(self, request: Request, conn: HttpConnection) -> None:
        """Run the app on this thread (see the module's docstring); its exceptions go to the
        connection (a 500, or closing once the head is out)."""
        environ = self.environ(request, conn)
        response = _Response(conn)
        worker = conn.worker
        running = events._get_running_loop()
        events._set_running_loop(None)
        worker.app_holds_loop = conn.blocking = True
        try:
            self._call_app(environ, response)
            response.finish()
        finally:
            worker.app_holds_loop = conn.blocking = False
            events._set_running_loop(running)

    def environ(self, request: Request, conn: HttpConnection) -> dict[str, Any]:
        raw_path, query = request.path_and_query
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": request.scheme,
            "wsgi.input": request.body.stream(),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
        }
        # Names with an underscore are gone already (Request), or X_Auth_User would be merged
        # into the HTTP_X_AUTH_USER of an authenticating proxy's X-Auth-User.
        for name, value in request.headers:
            key = _SPECIAL_HEADERS.get(name)
            if key is None:
                key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server_address(
            request, conn, environ.get("HTTP_HOST"))
        client = request.client or conn.client
        if client is not None:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
        return environ

    def _call_app(self, environ: dict[str, Any], response: _Response) -> None:
        result = self.app(environ, response.start_response)
        try:
            pieces = iter(result)
            if isinstance(pieces, _IN_MEMORY):
                # A body in memory (a list, Django's HttpResponse): written once the app is
                # done, in one piece with its Content-Length.
                response.body = b"".join([as_bytes(piece, "a WSGI body's piece")
                                          for piece in pieces])
                return
            for chunk in pieces:
                if chunk and not response.send(as_bytes(chunk, "a WSGI body's piece")):
                    return  # the client went away: stop producing
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _encode_fields(headers: Iterable[Any]) -> list[tuple[bytes, bytes]]:
    """start_response's headers, any iterable of (name, value) str pairs as gunicorn takes
    them (PEP 3333 asks for a list of tuples), as latin-1 bytes."""
    fields = []
    for field in headers:
        name, value = field
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"a WSGI header's name and value must be str, not {field!r}")
        fields.append((name.encode("latin-1"), value.encode("latin-1")))
    return fields


class _Response:
    """start_response, and the response's pieces written as the app produces them; a body
    known up front (a list) is written at the end, in one piece with its Content-Length."""

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.body = b""  # the last piece, written once the app is done

    # Called by the app: its arguments are checked here, not by declared types that the
    # compiled build would enforce with errors of its own (request.as_bytes says why).
    def start_response(
        self, status: object, headers: Iterable[Any], exc_info: Any = None
    ) -> Callable[[object], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not isinstance(status, str):
            raise TypeError(f"WSGI status must be a str, not {type(status).__name__}")
        code, _, _reason = status.partition(" ")
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"WSGI status {status!r} does not start with a 3-digit code")
        fields = _encode_fields(headers)
        field_lines(fields)  # a field that would split the response: ValueError, to the app
        self.status = int(code)
        self.headers = fields
        return self.write

    def write(self, data: object) -> None:
        """The legacy write() callable of PEP 3333."""
        data = as_bytes(data, "the data given to write()")
        if data:
            self.send(data)

    def send(self, data: bytes) -> bool:
        """Write a piece that more will follow now; False once the connection is gone."""
        if self.status is None:
            raise AssertionError("the WSGI app produced a body before calling start_response")
        if self.conn.closing:
            return False
        self._write(data, True)
        return not self.conn.closing

    def finish(self) -> None:
        """The app is done: the last piece (the whole body of a list), and the end."""
        if self.status is None:
            raise AssertionError("the WSGI app returned without calling start_response")
        self._write(self.body, False)

    def _write(self, data: bytes, more: bool) -> None:
        # Written even when the client is gone (the connection then writes nothing), so that
        # the request counts as answered rather than "returned without a response".
        conn = self.conn
        if not self.headers_sent:
            self.headers_sent = True  # start_response(exc_info) must raise from now on
            assert self.status is not None
            conn.start_response(self.status, self.headers, data, more)
        elif data or not more:
            conn.write(data, more)
