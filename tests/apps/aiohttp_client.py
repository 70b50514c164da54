"""An aiohttp app that shows what the worker told it about the client."""

from aiohttp import web


async def client(request: web.Request) -> web.Response:
    return web.json_response({"remote": request.remote, "scheme": request.scheme,
                              "rip_headers": [k for k in request.headers
                                              if k.lower().startswith("rip-")]})


app = web.Application()
app.router.add_get("/", client)
