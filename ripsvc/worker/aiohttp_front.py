"""Serving an aiohttp.web.Application with aiohttp's own server.

aiohttp apps get genuine aiohttp requests, so they are not translated through our HTTP
protocol: aiohttp's low-level `web.Server` serves the worker's socket and hands each request to
the current app generation (module reload swaps it). Each generation is set up with the public
AppRunner, which runs the app's startup and cleanup signals; we only borrow its request handler
and request factory, never its sites.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from ripsvc import logs
from ripsvc.worker.http import dropped_app_header
from ripsvc.worker.request import parse_client

if TYPE_CHECKING:
    from ripsvc.worker.core import Worker

log = logs.get("worker.aiohttp")


class AiohttpHost:
    kind = "aiohttp"

    def __init__(self, app: web.Application) -> None:
        self.app = app
        if app.frozen:  # set up already by the app's own code: its signals are final
            log.warning("the aiohttp app is frozen: Rip-* headers of the responses it "
                        "prepares itself (streams) cannot be left out")
        else:
            app.on_response_prepare.append(_before_prepare)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)

    async def startup(self) -> None:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        self.handle = server.request_handler
        self.make_request = server.request_factory

    async def shutdown(self) -> None:
        await self.runner.cleanup()


BUSY = {"Rip-Worker-Busy": "1"}


def without_rip_headers(response: web.StreamResponse) -> None:
    """Rip-* response headers are the worker's words to the balancer (Rip-Worker-Busy would
    have it send the request to another worker again): never the app's (as in http.py)."""
    for name in [name for name in response.headers if name.lower().startswith("rip-")]:
        dropped_app_header(name.lower().encode("latin-1"))
        del response.headers[name]


async def _before_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """A response the app prepares itself (a stream); aiohttp prepares the others with the
    request as it came, which has no route and so calls no app's signals: dispatch() sees to
    those."""
    without_rip_headers(response)


def from_balancer(request: web.BaseRequest) -> web.BaseRequest:
    """The client's address (`request.remote`) and scheme as the balancer saw them, and for a
    request without a Host header, the address it connected to (`request.host`, where aiohttp
    would put this machine's name). Neither the balancer's internal Rip-* headers nor fields
    whose name holds an underscore are shown to the app (request.without_underscores)."""
    changes: dict[str, Any] = {}
    kept = [(name, value) for name, value in request.headers.items()
            if "_" not in name and not name.lower().startswith("rip-")]
    if len(kept) != len(request.headers):
        changes["headers"] = CIMultiDict(kept)
    client = request.headers.get("Rip-Client")
    parsed = parse_client(client.encode("latin-1")) if client is not None else None
    if parsed is not None:
        proto = request.headers.get("X-Forwarded-Proto")
        changes["remote"] = parsed[0]
        changes["scheme"] = proto if proto in ("http", "https") else "http"
    server = request.headers.get("Rip-Server")
    if (server is not None and "Host" not in request.headers
            and parse_client(server.encode("latin-1")) is not None):
        changes["host"] = server  # HOST:PORT, [HOST]:PORT for IPv6, as a Host header has it
    return request.clone(**changes) if changes else request


def make_server(worker: Worker) -> web.Server:
    """The protocol factory serving the worker's sockets for an aiohttp app. A WebSocket
    worker's serves many requests at once (each a WebSocket): no gate."""
    max_body = worker.options.max_body

    async def dispatch_websocket(request: web.BaseRequest) -> web.StreamResponse:
        host = worker.host
        assert isinstance(host, AiohttpHost)
        return await host.handle(from_balancer(request))

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if "Rip-Probe" in request.headers:  # is the worker idle? (http.py: _answer_probe)
            if worker.accepting and not worker.gate.busy:
                return web.Response(status=204)
            return web.Response(status=503, headers=BUSY)
        if not worker.accepting:
            return web.Response(status=503, headers={**BUSY, "Connection": "close"})
        if not worker.gate.acquire():
            return web.Response(status=503, headers=BUSY)
        try:
            if request.content_length is not None and request.content_length > max_body:
                return web.Response(status=413, text="413 Payload Too Large\n",
                                    headers={"Connection": "close"})
            await worker.before_request()
            request = from_balancer(request)
            host = worker.host
            assert isinstance(host, AiohttpHost)
            response: web.StreamResponse = await host.handle(request)
            if not response.prepared:
                without_rip_headers(response)
                if worker.last_request():
                    response.force_close()  # Connection: close, as the worker is about to go
            return response
        finally:
            worker.request_finished()

    def make_request(*args: Any, **kwargs: Any) -> web.BaseRequest:
        host = worker.host
        assert isinstance(host, AiohttpHost)
        return host.make_request(*args, **kwargs)

    return web.Server(dispatch_websocket if worker.options.websocket else dispatch,
                      request_factory=make_request, access_log=None)
