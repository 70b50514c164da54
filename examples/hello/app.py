"""The hello example: a plain ASGI 3 app with no dependencies.

/          → a greeting and the paths below
/ping      → "pong <timestamp>"
/slow?ms=N → answers after N milliseconds
/echo      → the request body back, with its length
/version   → the contents of VERSION beside this file (tests change it on disk)
"""

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs

HERE = Path(__file__).parent
HOME = b"""Hello from rip-server: examples/hello is serving this.
Try /ping, /slow?ms=500, /echo (POST a body) or /version;
/status is the balancer's own health report.
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/":
        await reply(send, HOME)
    elif path == "/ping":
        await reply(send, b"pong %.6f\n" % time.time())
    elif path == "/slow":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["100"])[0])
        await asyncio.sleep(ms / 1000)
        await reply(send, b"slept %d ms\n" % ms)
    elif path == "/echo":
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await reply(send, bytes(body), [(b"x-body-length", b"%d" % len(body))])
    elif path == "/version":
        await reply(send, (HERE / "VERSION").read_bytes())
    else:
        await reply(send, b"not found\n", status=404)


async def reply(send, body, headers=(), status=200):
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"), *headers],
    })
    await send({"type": "http.response.body", "body": body})
