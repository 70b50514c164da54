"""Noticing a touched restart file (tmp/restart.txt) with inotify: no polling.

The standard library has no inotify binding and none of our dependencies offers one, so the
three libc calls are made through ctypes; the descriptor is watched by the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Callable
from pathlib import Path

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
DEBOUNCE = 0.05
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded

_libc = ctypes.CDLL(None, use_errno=True)


class FileWatcher:
    """Calls `changed()` when `path` is created, written, touched or moved into place."""

    def __init__(self, path: Path, changed: Callable[[], None]) -> None:
        self.path = path
        self.changed = changed
        self.loop = asyncio.get_running_loop()
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if _libc.inotify_add_watch(self.fd, str(path.parent).encode(), mask) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"cannot watch {path.parent}: {os.strerror(errno)}")
        self._pending: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset, hit = 0, False
        while offset + _EVENT.size <= len(data):
            _, _, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            hit = hit or name == self.path.name.encode()
            offset += _EVENT.size + length
        if hit and self._pending is None:
            # One touch is several events (create, attrib, close-write), maybe in several
            # reads: they make one call.
            self._pending = self.loop.call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.changed()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
