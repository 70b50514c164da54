"""ripctl's side of the manager's control socket (blocking: one command, one reply)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from ripsvc import paths
from ripsvc.exitcodes import ExitCode


class ControlError(Exception):
    def __init__(self, message: str, exit_code: int = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UnixHTTPConnection(http.client.HTTPConnection):
    """A keep-alive HTTP/1.1 connection to a Unix socket (http.client does the framing)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = os.fspath(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def running_apps() -> list[str]:
    """The apps whose manager's socket is in this user's runtime directory, by name."""
    root = paths.runtime_root()
    return sorted(sock.parent.name for sock in root.glob(f"*/{paths.MANAGER_SOCKET}"))


def send(path: str | os.PathLike[str], command: str, body: dict[str, Any] | None = None,
         timeout: float = 600.0, method: str = "") -> tuple[int, dict[str, Any]]:
    """One command on a control socket (GET without a body, POST with JSON, unless `method`
    says otherwise): (HTTP status, decoded reply). Socket and decoding errors are raised."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        if body is None:
            conn.request(method or "GET", f"/{command}")
        else:
            conn.request(method or "POST", f"/{command}", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def call(app: str, command: str, body: dict[str, Any] | None = None,
         timeout: float = 600.0, method: str = "") -> Any:
    """Send `command` to the manager of `app`; return its data or raise ControlError."""
    try:
        path = paths.manager_socket(app)
    except ValueError as exc:
        raise ControlError(str(exc), ExitCode.USAGE) from None
    try:
        _, reply = send(path, command, body, timeout, method)
    except FileNotFoundError:
        raise ControlError(f"no app named {app!r} is running (no {path})") from None
    except ConnectionRefusedError:
        raise ControlError(f"{app!r} is not running ({path} is stale)") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path} (root or group rip only)") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ControlError(f"{app!r}: {exc}") from None
    if not reply.get("ok"):
        error = reply.get("error", {})
        raise ControlError(f"{app}: {error.get('message')} ({error.get('code')})")
    return reply["data"]
