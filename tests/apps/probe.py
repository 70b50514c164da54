"""An ASGI app for balancer tests: tells who served a request and what it saw.

/pid                → this worker's pid
/slow?ms=N[&mark=F] → answers after N ms, with the pid (creates file F when it starts)
/echo               → the body back
/headers            → the request headers as JSON
/big?size=N         → N bytes
/stream?n=N&ms=M    → N pieces, M ms apart, with X-Accel-Buffering: no (&status=S: its status)
/secret             → a response carrying an internal Rip-* header
/client             → the ASGI client and scheme as JSON
/fail-midway        → a first piece of the body, then the app raises
/short              → Content-Length 100, 10 bytes, and the app returns
/charge?n=N&file=F  → appends N to file F (a side effect a test can count)
/sse?n=N&ms=M       → N Server-Sent Events, M ms apart, with no special header
/wait-disconnect?file=F → waits for http.disconnect, then writes its delay to file F

WebSockets (a WebSocket worker):
/echo               → every message back; "close:CODE" closes with CODE
/refuse             → closed before it is accepted (403)
/scope              → the scope's client, server, scheme and headers, as one text message
"""

import asyncio
import json
import os
from urllib.parse import parse_qs

PID = str(os.getpid()).encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send)
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(b"x-pid", PID)]
    if path == "/slow":
        if "mark" in query:  # tells the test that the app has the request
            open(query["mark"], "w").close()  # noqa: SIM115, ASYNC230
        await asyncio.sleep(int(query.get("ms", "100")) / 1000)
        return await reply(send, PID + b" " + query.get("tag", "").encode(), headers)
    if path == "/echo":
        return await reply(send, body, headers)
    if path == "/headers":
        seen = {k.decode(): v.decode() for k, v in scope["headers"]}
        return await reply(send, json.dumps(seen).encode(), headers)
    if path == "/client":
        seen = {"client": scope["client"], "scheme": scope["scheme"]}
        return await reply(send, json.dumps(seen).encode(), headers)
    if path == "/big":
        return await reply(send, b"b" * int(query["size"]), headers)
    if path == "/secret":
        return await reply(send, b"ok", [*headers, (b"rip-secret", b"1"), (b"rip-worker-x", b"2")])
    if path == "/stream":
        length = [(b"content-length", query["length"].encode())] if "length" in query else []
        await send({"type": "http.response.start", "status": int(query.get("status", "200")),
                    "headers": [*headers, *length, (b"x-accel-buffering", b"no")]})
        for i in range(int(query.get("n", "3"))):
            await send({"type": "http.response.body", "body": b"piece %d\n" % i,
                        "more_body": True})
            await asyncio.sleep(int(query.get("ms", "200")) / 1000)
        return await send({"type": "http.response.body", "body": b""})
    if path == "/fail-midway":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"first piece\n", "more_body": True})
        raise RuntimeError("this route fails midway")
    if path == "/short":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"ten bytes\n", "more_body": True})
        return await send({"type": "http.response.body", "body": b""})
    if path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-type", b"text/event-stream")]})
        for i in range(int(query.get("n", "3"))):
            await send({"type": "http.response.body", "body": b"data: event %d\n\n" % i,
                        "more_body": True})
            await asyncio.sleep(int(query.get("ms", "200")) / 1000)
        return await send({"type": "http.response.body", "body": b""})
    if path == "/wait-disconnect":
        start = asyncio.get_running_loop().time()
        while (await receive())["type"] != "http.disconnect":
            pass
        with open(query["file"], "w") as seen:  # noqa: ASYNC230
            seen.write(str(asyncio.get_running_loop().time() - start))
        return None
    if path == "/charge":
        with open(query["file"], "a") as charged:  # noqa: ASYNC230
            charged.write(query["n"] + "\n")
        return await reply(send, b"charged " + query["n"].encode(), headers)
    return await reply(send, PID + b"\n", headers)


async def reply(send, body, headers):
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send):
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/refuse":
        return await send({"type": "websocket.close"})
    await send({"type": "websocket.accept"})
    if scope["path"] == "/scope":
        seen = {"client": scope["client"], "server": scope["server"], "scheme": scope["scheme"],
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]}}
        await send({"type": "websocket.send", "text": json.dumps(seen)})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text and text.startswith("close:"):
            return await send({"type": "websocket.close", "code": int(text[6:])})
        await send({"type": "websocket.send", "text": text, "bytes": message.get("bytes")})
