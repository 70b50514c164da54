"""An ASGI app (without lifespan support) that raises on /raise."""


async def app(scope, receive, send):
    assert scope["type"] == "http"  # raising on lifespan is how an app says it has none
    if scope["path"] == "/raise":
        1 / 0
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok\n"})
