"""An ASGI app for the compression tests: responses of a chosen type, size and headers.

/text?size=N&type=T&cc=C&ce=E&etag=G&vary=V&status=S → N bytes of text (one piece), with
                          Content-Type T (text/html), and Cache-Control, Content-Encoding, ETag,
                          Vary when given
/chunked?size=N&type=T  → the same body in 4 pieces, without Content-Length (chunked)
/sse?n=N&ms=M&unbuffered=1 → N Server-Sent Events, M ms apart (X-Accel-Buffering: no with
                          unbuffered=1), each saying when it was sent
/headers                → the request headers as JSON
"""

import asyncio
import json
import time
from urllib.parse import parse_qs

LINE = b"All work and no play makes Jack a dull boy. 0123456789\n"


def text(size):
    return (LINE * (size // len(LINE) + 1))[:size]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", query.get("type", "text/html").encode())]
    for key, name in (("cc", b"cache-control"), ("ce", b"content-encoding"), ("etag", b"etag"),
                      ("vary", b"vary")):
        if key in query:
            headers.append((name, query[key].encode()))
    if path == "/text":
        body = text(int(query.get("size", "10000")))
        await send({"type": "http.response.start", "status": int(query.get("status", "200")),
                    "headers": [*headers, (b"content-length", b"%d" % len(body))]})
        return await send({"type": "http.response.body", "body": body})
    if path == "/chunked":
        body = text(int(query.get("size", "10000")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = len(body) // 4 + 1
        for i in range(0, len(body), step):
            await send({"type": "http.response.body", "body": body[i:i + step],
                        "more_body": True})
        return await send({"type": "http.response.body", "body": b""})
    if path == "/sse":
        extra = [(b"x-accel-buffering", b"no")] if query.get("unbuffered") else []
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), *extra]})
        for i in range(int(query.get("n", "3"))):
            event = b"data: event %d at %.6f\n\n" % (i, time.time())
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(int(query.get("ms", "300")) / 1000)
        return await send({"type": "http.response.body", "body": b""})
    if path == "/headers":
        seen = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        return await send({"type": "http.response.body", "body": body})
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": b"not found\n"})
