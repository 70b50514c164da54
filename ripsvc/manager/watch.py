"""Noticing a touched restart file (tmp/restart.txt) with inotify: no polling.

The standard library has no inotify binding and none of our dependencies offers one, so the
three libc calls are made through ctypes; the descriptor is watched by the event loop.
The file's directory may not exist yet (tmp/ is often made later, or by the deploy): its
parent is watched too, so that the directory is watched as soon as it appears, and again if
it is removed and made anew. A watch follows the directory it was set on, not a symbolic link
on the way (a deploy switching `current` from releases/1 to releases/2): `recheck()`, called
once a second, sets the watches again where the path leads now, and a restart file touched
there since counts.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_IGNORED = 0x8000  # the watch is gone (its directory was removed)
IN_ONLYDIR = 0x01000000
DEBOUNCE = 0.05
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
_FILE_EVENTS = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

_libc = ctypes.CDLL(None, use_errno=True)


class FileWatcher:
    """Calls `changed()` when `path` is created, written, touched or moved into place, also
    when its directory appears only later (raises OSError if even the parent of that
    directory cannot be watched)."""

    def __init__(self, path: Path, changed: Callable[[], None]) -> None:
        self.path = path
        self.changed = changed
        self.loop = asyncio.get_running_loop()
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._parent_wd = self._dir_wd = -1
        self._leads_to = ""  # the directory the path led to when the watches were set
        self._since = time.time()  # a restart file newer than this is a touch not yet seen
        try:
            self._arm()
        except OSError:
            os.close(self.fd)
            raise
        self._pending: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.fd, self._read)

    def _arm(self) -> None:
        """Watch the file's directory and its parent where the path leads now."""
        for wd in (self._parent_wd, self._dir_wd):
            if wd >= 0:
                _libc.inotify_rm_watch(self.fd, wd)
        directory = self.path.parent
        self._leads_to = os.path.realpath(directory)
        self._parent_wd = _libc.inotify_add_watch(
            self.fd, str(directory.parent).encode(), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
        if self._parent_wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot watch {directory.parent}: {os.strerror(errno)}")
        self._dir_wd = -1
        self._watch_directory()

    def recheck(self) -> None:
        """A symbolic link on the path now leads elsewhere: watch there, and a restart file
        touched there since the last look counts (a deploy switches, then touches at once)."""
        if os.path.realpath(self.path.parent) == self._leads_to:
            self._since = time.time()
            return
        try:
            self._arm()
        except OSError:
            return  # the parent is gone for now: the next look tries again
        try:
            touched = self.path.stat().st_mtime >= self._since
        except OSError:
            touched = False
        self._since = time.time()
        if touched and self._pending is None:
            self._pending = self.loop.call_later(DEBOUNCE, self._fire)

    def _watch_directory(self) -> bool:
        """Watch the file's directory, if it exists now; True if it does."""
        self._dir_wd = _libc.inotify_add_watch(self.fd, str(self.path.parent).encode(),
                                               _FILE_EVENTS | IN_ONLYDIR)
        return self._dir_wd >= 0

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset, hit = 0, False
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if wd == self._dir_wd:
                if mask & IN_IGNORED:
                    self._dir_wd = -1
                hit = hit or name == self.path.name.encode()
            elif wd == self._parent_wd and name == self.path.parent.name.encode():
                # The directory appeared: watched from now on. A restart file already in it
                # (made with it) counts as touched.
                hit = hit or (self._watch_directory() and self.path.exists())
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
