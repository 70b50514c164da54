"""The systemd glue: socket activation and sd_notify.

Both protocols are systemd's own, and the embedded supervisor speaks them too, so a process
behaves the same under either. Outside systemd (no LISTEN_FDS, no NOTIFY_SOCKET) every call
here is a silent no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from systemd import daemon


class ActivationError(RuntimeError):
    """The socket-activation environment is present but not usable."""


def listen_sockets() -> dict[str, socket.socket]:
    """Return the sockets passed by socket activation, keyed by their LISTEN_FDNAMES name.

    Unnamed sockets get systemd's default name "unknown" suffixed with their index so that
    none is lost. The LISTEN_* variables are removed so that children do not inherit them.
    """
    if "LISTEN_FDS" not in os.environ:
        return {}
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        # Meant for another process (we were forked or exec'd by the receiver): ignore.
        _unset_listen_env()
        return {}
    pairs = daemon.listen_fds_with_names(unset_environment=True)
    sockets: dict[str, socket.socket] = {}
    for index, (fd, name) in enumerate(sorted(pairs.items())):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"LISTEN_FDS: fd {fd} is not a socket: {exc}") from exc
        key = name if name and name not in sockets else f"{name or 'unknown'}.{index}"
        sockets[key] = sock
    return sockets


def _unset_listen_env() -> None:
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=…") in one datagram; False outside systemd."""
    if "NOTIFY_SOCKET" not in os.environ:
        return False
    try:
        return bool(daemon.notify("\n".join(fields)))
    except OSError:  # the supervisor went away: notifications are best effort
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def start_watchdog(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Ping WATCHDOG=1 from the event loop at half the timeout, so a stalled loop is noticed
    by its supervisor (systemd's WatchdogSec=, or the embedded manager). Returns a function
    that stops the pings; a no-op without a watchdog."""
    interval = watchdog_interval()
    if interval is None or "NOTIFY_SOCKET" not in os.environ:
        return lambda: None
    pending: list[asyncio.TimerHandle] = []

    def ping() -> None:
        notify("WATCHDOG=1")
        pending[0] = loop.call_later(interval, ping)

    pending.append(loop.call_later(0, ping))
    return lambda: pending[0].cancel()
