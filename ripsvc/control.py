"""The control socket: JSON over HTTP on a Unix socket that only root (or group rip) can open.

Every reply has one shape: {"ok": true, "data": …} or {"ok": false, "error": {"code": …,
"message": …}} with a matching HTTP status; a command never answers ok while failing.
Debuggable with `curl --unix-socket SOCK http://rip/pool`.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ripsvc import logs

log = logs.get("control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def ok(data: Any = None) -> web.Response:
    return web.json_response({"ok": True, "data": data})


def error(code: str, message: str, status: int) -> web.Response:
    return web.json_response({"ok": False, "error": {"code": code, "message": message}},
                             status=status)


def require(body: dict[str, Any], name: str, kind: type = str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise CommandError("bad-request", f"{name!r} must be a non-empty {kind.__name__}")
    return value


def make_app(commands: dict[str, Handler],
             raw: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
             | None = None) -> web.Application:
    """One route per command: GET for queries (no body), POST with a JSON object otherwise.
    `raw`: paths answered in another format (Prometheus text at /metrics)."""

    async def dispatch(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        handler = commands.get(name)
        if handler is None:
            return error("unknown-command", f"no command {name!r}; known: "
                         f"{', '.join(sorted(commands))}", 404)
        body: Any = {}
        if request.can_read_body:
            try:
                body = json.loads(await request.read() or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                return error("bad-json", f"the request body is not JSON: {exc}", 400)
            if not isinstance(body, dict):
                return error("bad-json", "the request body must be a JSON object", 400)
        try:
            return ok(await handler(body))
        except CommandError as exc:
            return error(exc.code, str(exc), exc.status)
        except Exception as exc:  # still one JSON shape for the client, and a log entry
            log.exception("control command %s failed", name)
            return error("internal", f"{type(exc).__name__}: {exc}", 500)

    app = web.Application()
    for path, handler in (raw or {}).items():
        app.router.add_route("*", path, handler)
    app.router.add_route("*", "/{command}", dispatch)
    return app


def bind_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`: mode 0600, or 0660 owned by group `rip` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)
    try:
        gid: int | None = grp.getgrnam("rip").gr_gid
    except KeyError:
        gid = None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177 if gid is None else 0o117)  # no window with a wider mode
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    if gid is not None and os.stat(path).st_gid != gid:  # under systemd it is our group
        os.chown(path, -1, gid)
    sock.listen(64)
    return sock
