"""A FastAPI app for the ASGI conformance tests.

/memoryview → a Response whose content is a memoryview (Starlette passes it through as is)
/seen       → what Starlette tells a route about the URL, the server, the client and a header
"""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

started = []


@asynccontextmanager
async def lifespan(app):
    started.append(True)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/memoryview")
def from_memoryview():
    return Response(content=memoryview(b"from a memoryview\n"), media_type="text/plain")


@app.get("/seen")
def seen(request: Request):
    return {"url": str(request.url), "server": request.scope["server"],
            "client": request.client.host if request.client else None,
            "auth_user": request.headers.get("x-auth-user"),
            "header_names": sorted(request.headers.keys()), "started": bool(started)}
