"""Running an ASGI 3 app: lifespan startup/shutdown and one HTTP request at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ripsvc import logs
from ripsvc.apploader import AppLoadError
from ripsvc.worker.errors import ClientDisconnected
from ripsvc.worker.request import Request, as_bytes

if TYPE_CHECKING:
    from ripsvc.worker.http import HttpConnection

log = logs.get("worker.asgi")

#: 2.4: send() raises an OSError once the client has left (ClientDisconnected), and a
#: framework that knows it (Starlette) streams without watching for http.disconnect.
ASGI_INFO = {"version": "3.0", "spec_version": "2.4"}
Message = dict[str, Any]


class LifespanFailed(AppLoadError):
    pass


class AsgiHost:
    kind = "asgi"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Any] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None
        self._supported = True
        self._replied = False  # the app answered a lifespan event

    # -- lifespan ----------------------------------------------------------------------------
    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_INFO, "state": self.state}
        self._lifespan = asyncio.get_running_loop().create_task(self._run_lifespan(scope))
        reply = await self._exchange({"type": "lifespan.startup"})
        if reply is None:
            return
        if reply["type"] == "lifespan.startup.failed":
            raise LifespanFailed(f"lifespan startup failed: {reply.get('message', '')}")
        if reply["type"] != "lifespan.startup.complete":
            raise LifespanFailed(f"lifespan startup: unexpected message {reply['type']!r}")

    async def shutdown(self) -> None:
        lifespan = self._lifespan
        if lifespan is None or lifespan.done():
            return
        reply = await self._exchange({"type": "lifespan.shutdown"})
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", reply.get("message", ""))
        await asyncio.wait({lifespan}, timeout=5)

    async def _run_lifespan(self, scope: Message) -> None:
        try:
            await self.app(scope, self._to_app.get, self._from_app.put)
        except BaseException as exc:
            if self._never_replied():
                # Raising before the first reply is how an app says it has no lifespan.
                log.debug("the app does not support lifespan (%r)", exc)
                self._supported = False
            else:
                log.exception("error in the app's lifespan task")
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self._never_replied():
                # So is returning without a reply: `if scope["type"] != "http": return` in
                # minimal apps; uvicorn and hypercorn serve those as apps without lifespan.
                if self._to_app.empty():  # it took lifespan.startup, though
                    log.warning("the app's lifespan returned without answering "
                                "'lifespan.startup': serving it without lifespan")
                else:
                    log.debug("the app does not support lifespan (it returned at once)")
                self._supported = False

    def _never_replied(self) -> bool:
        return self._supported and not self._replied and self._from_app.empty()

    async def _exchange(self, message: Message) -> Message | None:
        """Send a lifespan event and wait for the reply, or None if the lifespan task ended."""
        lifespan = self._lifespan
        assert lifespan is not None
        if not self._supported or lifespan.done():
            return None
        await self._to_app.put(message)
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({reply, lifespan}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            self._replied = True
            result = reply.result()  # Any: compiled, a declared dict would refuse a Mapping
            return result if isinstance(result, dict) else dict(result)
        reply.cancel()
        if self._supported:
            raise LifespanFailed(f"lifespan task ended without answering {message['type']!r}")
        return None

    # -- requests ----------------------------------------------------------------------------
    async def handle(self, request: Request, conn: HttpConnection) -> None:
        raw_path, query = request.path_and_query
        scope = {
            "type": "http",
            "asgi": ASGI_INFO,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": request.scheme,
            "path": (unquote_to_bytes(raw_path) if raw_path.find(b"%") >= 0 else raw_path
                     ).decode("utf-8", "surrogateescape"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": request.client or conn.client,
            "server": request.server or conn.server or unix_server(conn),
            "state": self.state.copy(),
        }
        # A body in memory is one piece: no generator to create (and close) per request.
        chunks: Iterator[bytes]
        next_chunk: bytes | None
        if request.body.in_memory:
            chunks, next_chunk = iter(()), request.body.read_all()
        else:
            chunks = request.body.chunks()
            next_chunk = next(chunks)

        async def receive() -> Message:
            nonlocal next_chunk
            if next_chunk is not None:
                body, next_chunk = next_chunk, next(chunks, None)
                return {"type": "http.request", "body": body, "more_body": next_chunk is not None}
            await conn.wait_done()
            return {"type": "http.disconnect"}

        pending_start: Message | None = None

        # The message is typed loosely on purpose: compiled, a declared type is checked at run
        # time, and the spec allows more than one (any iterable of [name, value] headers, any
        # bytes-like body); each value is checked and converted below, alike in both builds.
        async def send(message: Any) -> None:
            nonlocal pending_start
            if not isinstance(message, dict):  # narrowed, compiled code reads it as a dict
                message = dict(message)
            if conn.gone:
                raise ClientDisconnected("the client disconnected")
            kind = message["type"]
            if kind == "http.response.body":
                if pending_start is None:
                    raise RuntimeError("http.response.body before http.response.start")
                body = as_bytes(message.get("body", b""), "http.response.body's body")
                more = bool(message.get("more_body", False))
                if not conn.response_started:
                    # Headers wait for the first body piece so that a one-piece response
                    # leaves in one write with its Content-Length.
                    conn.start_response(status_code(pending_start),
                                        header_fields(pending_start.get("headers", ())),
                                        body, more)
                else:
                    conn.write(body, more)
                if more:
                    await conn.drain()
            elif kind == "http.response.start":
                if pending_start is not None:
                    raise RuntimeError("http.response.start sent twice")
                pending_start = message
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")

        await self.app(scope, receive, send)
        if pending_start is not None and not conn.response_started:
            # Started, and returned without a body message: the response is complete as
            # started, with an empty body (hypercorn answers 500, uvicorn sends the head and
            # closes, which leaves a client of a 200 with an incomplete body).
            fields = header_fields(pending_start.get("headers", ()))
            status = status_code(pending_start)
            if status not in (204, 304):
                log.warning("%s %s: the app returned after http.response.start %d without "
                            "http.response.body: an empty body was sent", request.method,
                            request.target.decode("latin-1"), status)
            conn.start_response(status, fields, b"", False)
            if any(name.lower() == b"content-length" and value.strip() != b"0"
                   for name, value in fields):
                conn.closing = True  # it promised a body that will never come


def status_code(start: Message) -> int:
    status = start["status"]
    if isinstance(status, int):  # HTTPStatus too
        return int(status)
    raise TypeError(f"http.response.start's status must be an int, not {status!r}")


def header_fields(headers: Any) -> list[tuple[bytes, bytes]]:
    """http.response.start's headers, any iterable of two bytes-like items, as a list of
    (bytes, bytes). In the spec's own notation, a list of lists."""
    if isinstance(headers, list):
        for field in headers:
            if not (isinstance(field, tuple) and len(field) == 2
                    and isinstance(field[0], bytes) and isinstance(field[1], bytes)):
                break
        else:
            return headers  # the usual shape: no copy
    fields: list[tuple[bytes, bytes]] = []
    for field in headers:
        name, value = field
        fields.append((as_bytes(name, "a header name"), as_bytes(value, "a header value")))
    return fields


def unix_server(conn: HttpConnection) -> tuple[str, None] | None:
    """ASGI `server` for a request that came straight to a Unix socket, not through the
    balancer (tests, a proxy of one's own): [path, None] as the spec says and uvicorn gives."""
    path = conn.transport.get_extra_info("sockname")
    return (path, None) if isinstance(path, str) and path else None
