"""Apps (ASGI `app`, WSGI `wsgi`) that answer /value with a header value carrying CR LF (a
response-splitting attempt), /name with a space in a header name, anything else with 200."""

BAD = {
    "/value": (b"x-note", b"a\r\nx-injected: 1"),
    "/nul": (b"x-note", b"a\x00b"),
    "/name": (b"x note", b"a"),
}


async def app(scope, receive, send):
    assert scope["type"] == "http"  # no lifespan
    header = BAD.get(scope["path"], (b"x-note", b"fine"))
    await send({"type": "http.response.start", "status": 200, "headers": [header]})
    await send({"type": "http.response.body", "body": b"ok\n"})


def wsgi(environ, start_response):
    name, value = BAD.get(environ["PATH_INFO"], (b"x-note", b"fine"))
    start_response("200 OK", [(name.decode("latin-1"), value.decode("latin-1"))])
    return [b"ok\n"]
