"""The adapter between the worker and the app, by the app's kind: ASGI, WSGI or aiohttp.

Each is imported when an app of its kind is loaded (aiohttp is not imported for an ASGI app).
"""

from __future__ import annotations

from typing import Any

from ripsvc.worker.core import AppHost


def make_host(kind: str, app: Any) -> AppHost:
    if kind == "asgi":
        from ripsvc.worker.asgi import AsgiHost

        return AsgiHost(app)
    if kind == "wsgi":
        from ripsvc.worker.wsgi import WsgiHost

        return WsgiHost(app)
    from ripsvc.worker.aiohttp_front import AiohttpHost

    return AiohttpHost(app)
