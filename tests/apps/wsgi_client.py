"""A WSGI app that shows what the worker told it about the client."""

import json


def app(environ, start_response):
    seen = {"REMOTE_ADDR": environ.get("REMOTE_ADDR"), "REMOTE_PORT": environ.get("REMOTE_PORT"),
            "url_scheme": environ["wsgi.url_scheme"],
            "rip_headers": sorted(k for k in environ if k.startswith("HTTP_RIP_"))}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
