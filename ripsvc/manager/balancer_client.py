"""The manager's one client of the balancer's control socket.

Every call has a short timeout: a balancer that does not answer must never stall the manager
(its health checks, its watchdog, a rolling restart). One session is kept for the manager's
life; its connector opens a connection per call (cheap on a Unix socket), so a restarted
balancer is never talked to through a connection of its predecessor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from ripsvc import logs

log = logs.get("manager")

#: Seconds a control call may take, unless it says otherwise (a drain waits for a request).
TIMEOUT = 5.0


class BalancerUnreachable(Exception):
    """The balancer did not answer (not running, not listening, too slow, or garbled)."""


class BalancerClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.path), force_close=True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def call(self, command: str, body: dict[str, Any] | None = None,
                   timeout: float = TIMEOUT) -> dict[str, Any]:
        """One command (POST with `body`, GET without): its reply, {"ok": …}. Raises
        BalancerUnreachable."""
        session = self._open()
        method = "POST" if body is not None else "GET"
        try:
            async with session.request(method, f"http://rip/{command}", json=body,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                reply = json.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise BalancerUnreachable(f"{command}: {exc or type(exc).__name__}") from None
        if not isinstance(reply, dict):
            raise BalancerUnreachable(f"{command}: an answer that is not a JSON object")
        return reply

    async def query(self, command: str, timeout: float = TIMEOUT) -> Any:
        """A GET command's data; BalancerUnreachable also when it answers an error."""
        reply = await self.call(command, None, timeout)
        if not reply.get("ok"):
            raise BalancerUnreachable(f"{command}: the balancer answered {reply.get('error')}")
        return reply["data"]

    async def raw(self, target: str, timeout: float = TIMEOUT) -> tuple[int, str, bytes]:
        """A GET of anything else (/metrics): status, content type, body."""
        session = self._open()
        try:
            async with session.get(f"http://rip{target}",
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return (resp.status, resp.headers.get("Content-Type", "text/plain"),
                        await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BalancerUnreachable(f"{target}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
