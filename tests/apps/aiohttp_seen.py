"""An aiohttp app that shows what the worker told it: the client, the scheme, the host and
the header names."""

from aiohttp import web


async def seen(request: web.Request) -> web.Response:
    return web.json_response({"remote": request.remote, "scheme": request.scheme,
                              "host": request.host, "headers": sorted(request.headers)})


app = web.Application()
app.router.add_get("/", seen)
