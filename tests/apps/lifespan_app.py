"""An ASGI app whose lifespan startup takes a while and stores state."""

import asyncio
import sys


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                print("startup begins", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5)
                scope["state"]["value"] = "started"
                print("startup done", file=sys.stderr, flush=True)
                await send({"type": "lifespan.startup.complete"})
            else:
                print("shutdown ran", file=sys.stderr, flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b"state: %s\n" % scope["state"]["value"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
