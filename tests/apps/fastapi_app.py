"""A FastAPI app for the ASGI conformance tests.

/memoryview → a Response whose body is a memoryview (rendered as it is: Starlette before 0.28,
              Debian 12's, would encode anything that is not bytes)
/seen       → what Starlette tells a route about the URL, the server, the client and a header
"""

import warnings

from fastapi import FastAPI, Request, Response

started = []
app = FastAPI()

with warnings.catch_warnings():  # on_event: what Debian 12's FastAPI 0.92 has (lifespan=: 0.93)
    warnings.simplefilter("ignore", DeprecationWarning)

    @app.on_event("startup")
    async def startup():
        started.append(True)


class AsItIs(Response):
    def render(self, content):
        return content


@app.get("/memoryview")
def from_memoryview():
    return AsItIs(content=memoryview(b"from a memoryview\n"), media_type="text/plain")


@app.get("/seen")
def seen(request: Request):
    return {"url": str(request.url), "server": request.scope["server"],
            "client": request.client.host if request.client else None,
            "auth_user": request.headers.get("x-auth-user"),
            "header_names": sorted(request.headers.keys()), "started": bool(started)}
