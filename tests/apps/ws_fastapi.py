"""A FastAPI app with WebSockets, for the WebSocket tests.

/ws/echo       → every text message back
/ws/broadcast  → every text message to every WebSocket connected here
/hi            → a plain HTTP route
"""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
connected: set[WebSocket] = set()


@app.get("/hi")
def hi():
    return {"hello": "from fastapi"}


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/broadcast")
async def broadcast(websocket: WebSocket):
    await websocket.accept()
    connected.add(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            for other in list(connected):
                await other.send_text(text)
    except WebSocketDisconnect:
        pass
    finally:
        connected.discard(websocket)
