"""An aiohttp app with WebSockets (web.WebSocketResponse), for the WebSocket tests.

/ws/echo       → every text message back
/ws/broadcast  → every text message to every WebSocket connected here
/hi            → a plain HTTP route
"""

from aiohttp import WSCloseCode, WSMsgType, web

connected: set[web.WebSocketResponse] = set()


async def hi(request: web.Request) -> web.Response:
    return web.json_response({"hello": "from aiohttp"})


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def broadcast(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    connected.add(ws)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                for other in list(connected):
                    await other.send_str(message.data)
    finally:
        connected.discard(ws)
    return ws


async def going_away(app: web.Application) -> None:
    for ws in list(connected):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the server is restarting")


app = web.Application()
app.router.add_get("/hi", hi)
app.router.add_get("/ws/echo", echo)
app.router.add_get("/ws/broadcast", broadcast)
app.on_shutdown.append(going_away)
