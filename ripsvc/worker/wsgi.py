"""Running a WSGI (PEP 3333) app.

The app runs in a thread of its own so that a long request never stalls the event loop, which
keeps pinging the watchdog, handling signals and answering "busy" meanwhile. Response pieces
are handed to the loop as they come (PEP 3333 forbids holding a block back until the next one
is produced).

Every hand-off between the two threads wakes one of them, and on a small machine those
wake-ups were most of a WSGI request's cost: the loop puts a request on a queue the app's
thread waits on, and the response comes back in as few calls into the loop as it has pieces,
the last one also telling the request's task that the app is done (a list body: one). Through
the balancer this served 6,600 requests/s where asyncio's `run_in_executor` (a
ThreadPoolExecutor's future chained to an asyncio future, plus one call per piece) served
5,000 (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ripsvc import logs
from ripsvc.http11 import field_lines
from ripsvc.worker.request import Request, as_bytes

if TYPE_CHECKING:
    from ripsvc.worker.http import HttpConnection

log = logs.get("worker.wsgi")

_Job = tuple[dict[str, Any], "_Response"]
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
        # One thread for the app, for the host's life: the worker runs one request at a time,
        # and a WSGI app may rely on thread-local state staying put between requests.
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._app_thread = threading.Thread(target=self._serve, name="wsgi", daemon=True)

    async def startup(self) -> None:
        self._app_thread.start()

    async def shutdown(self) -> None:
        """The thread ends once it is idle. Not waited for: a daemon thread, so that a request
        still running past the graceful timeout does not keep the process alive."""
        self._jobs.put(None)

    async def handle(self, request: Request, conn: HttpConnection) -> None:
        environ = self.environ(request, conn)
        done: asyncio.Future[None] = conn.loop.create_future()
        self._jobs.put((environ, _Response(conn, done)))
        await done

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

    # -- in the app's thread -----------------------------------------------------------------
    def _serve(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            environ, response = job
            error: BaseException | None = None
            try:
                self._call_app(environ, response)
            except BaseException as exc:  # to the request's task, as an executor would
                error = exc
            try:
                response.finish(error)
            except RuntimeError:  # the loop is closed: the worker stopped without waiting
                return

    def _call_app(self, environ: dict[str, Any], response: _Response) -> None:
        result = self.app(environ, response.start_response)
        try:
            if isinstance(result, (list, tuple)):
                # A finite body known up front: one hand-off, with a Content-Length.
                response.body = b"".join(result)
            else:
                for chunk in result:
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
    """start_response and the hand-off of response pieces from the app's thread to the loop.

    Each hand-off wakes the loop's thread, so the last piece travels with the news that the
    app is done (and its iterable closed): one wake-up for a whole list response."""

    def __init__(self, conn: HttpConnection, done: asyncio.Future[None]) -> None:
        self.conn = conn
        self.done = done
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.body = b""  # the last piece, held until the app is done

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
        """Hand a piece that more will follow to the loop now; False once the connection is
        gone."""
        conn = self.conn
        if self.status is None:
            raise AssertionError("the WSGI app produced a body before calling start_response")
        conn.writable.wait()  # back-pressure: the client is slower than the app
        if conn.closing:
            return False
        self._hand_over(data, True, None)
        return True

    def finish(self, error: BaseException | None) -> None:
        """The app is done (or raised `error`): the last piece, then the request's task."""
        if error is None and self.status is None:
            error = AssertionError("the WSGI app returned without calling start_response")
        self._hand_over(self.body, False, error)

    def _hand_over(self, data: bytes, more: bool, error: BaseException | None) -> None:
        # Marked sent here, in the app's thread: start_response(exc_info) must raise from now on.
        first = not self.headers_sent and error is None
        self.headers_sent = True
        self.conn.call_from_thread(self._deliver, first, data, more, error)

    # -- on the loop ---------------------------------------------------------------------------
    def _deliver(self, first: bool, data: bytes, more: bool, error: BaseException | None) -> None:
        # Written even when the client is gone (the connection then writes nothing), so that
        # the request counts as answered rather than "returned without a response".
        conn = self.conn
        if error is None:
            try:
                if first:
                    assert self.status is not None
                    conn.start_response(self.status, self.headers, data, more)
                elif data or not more:
                    conn.write(data, more)
            except Exception as exc:  # to the request's task: a 500, or closing
                error = exc
        if more and error is None:
            return
        done = self.done
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
