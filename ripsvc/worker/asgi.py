"""Running an ASGI 3 app: lifespan startup/shutdown and one HTTP request at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ripsvc import logs
from ripsvc.apploader import AppLoadError

if TYPE_CHECKING:
    from ripsvc.worker.http import HttpConnection
    from ripsvc.worker.request import Request

log = logs.get("worker.asgi")

ASGI_INFO = {"version": "3.0", "spec_version": "2.3"}
Message = dict[str, Any]


class LifespanFailed(AppLoadError):
    pass


class AsgiHost:
    kind = "asgi"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None
        self._supported = True

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
            if self._from_app.empty() and self._supported:
                # Raising before the first reply is how an app says it has no lifespan.
                log.debug("the app does not support lifespan (%r)", exc)
                self._supported = False
            else:
                log.exception("error in the app's lifespan task")
            if isinstance(exc, asyncio.CancelledError):
                raise

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
            return reply.result()
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
            "server": conn.server,
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

        async def send(message: Message) -> None:
            nonlocal pending_start
            kind = message["type"]
            if kind == "http.response.body":
                if pending_start is None:
                    raise RuntimeError("http.response.body before http.response.start")
                body = message.get("body", b"")
                more = message.get("more_body", False)
                if not conn.response_started:
                    # Headers wait for the first body piece so that a one-piece response
                    # leaves in one write with its Content-Length.
                    conn.start_response(pending_start["status"],
                                        pending_start.get("headers", []), body, more)
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
