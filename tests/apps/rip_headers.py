"""Apps that answer with a Rip-* header of their own (a 503 with Rip-Worker-Busy, as the
worker says it is busy): WSGI `wsgi`, ASGI `asgi`, aiohttp `aiohttp_app`."""

from aiohttp import web

BODY = b"503 the app itself is overloaded\n"
HEADERS = [("Content-Type", "text/plain"), ("Rip-Worker-Busy", "1"), ("Rip-Other", "x")]


def wsgi(environ, start_response):
    start_response("503 Service Unavailable", HEADERS)
    return [BODY]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 503,
                "headers": [(n.encode(), v.encode()) for n, v in HEADERS]})
    await send({"type": "http.response.body", "body": BODY})


async def _busy(request):
    return web.Response(status=503, body=BODY, headers=dict(HEADERS[1:]),
                        content_type="text/plain")


async def _busy_stream(request):  # prepared by the app itself
    response = web.StreamResponse(status=503, headers=dict(HEADERS))
    response.content_length = len(BODY)
    await response.prepare(request)
    await response.write(BODY)
    return response


aiohttp_app = web.Application()
aiohttp_app.router.add_route("*", "/stream", _busy_stream)
aiohttp_app.router.add_route("*", "/{tail:.*}", _busy)
