"""A 10 KB text/html response for bench/static.py --compression (ASGI)."""

BODY = b"".join(b"<p>row %05d: all work and no play makes Jack a dull boy</p>\n" % i
                for i in range(200))[:10240]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})
