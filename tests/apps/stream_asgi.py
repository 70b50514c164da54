"""A FastAPI app that streams, for the streaming tests.

/sse             → five Server-Sent Events, 50 ms apart (StreamingResponse, text/event-stream)
/poll?file=F     → polls request.is_disconnected() until the client leaves, then writes F
/fail-stream     → a StreamingResponse whose generator fails after its first piece
"""

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

app = FastAPI()


@app.get("/sse")
async def sse():
    async def events():
        for n in range(5):
            yield f"data: event {n}\n\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/poll")
async def poll(request: Request, file: str):
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)
    with open(file, "w") as seen:  # noqa: ASYNC230
        seen.write("gone")
    return PlainTextResponse("never read")


@app.get("/fail-stream")
async def fail_stream():
    async def pieces():
        yield b"first piece\n"
        await asyncio.sleep(0.05)
        raise RuntimeError("this stream fails midway")

    return StreamingResponse(pieces(), media_type="text/plain")
