"""Module reload: notice changed source files of the app and import them afresh.

Python validates cached bytecode by the source's mtime in whole seconds and its size, so an
edit that keeps the size within the same second would be served from a stale .pyc. Modules
from the app's directory are therefore compiled from source, never from bytecode caches, by
a finder installed in front of the normal path finder.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, ModuleType

FileSignature = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path)
        return compile(source, self.path, "exec", dont_inherit=True)


class SourceOnlyFinder(importlib.abc.MetaPathFinder):
    """Loads modules whose source lies under `directory` without bytecode caches."""

    def __init__(self, directory: Path) -> None:
        self.prefix = str(directory).rstrip("/") + "/"

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if (
            spec is not None
            and spec.origin
            and spec.origin.startswith(self.prefix)
            and isinstance(spec.loader, importlib.machinery.SourceFileLoader)
        ):
            spec.loader = _SourceOnlyLoader(fullname, spec.origin)
        return spec

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)


def _signature(path: str) -> FileSignature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ModuleWatcher:
    """Tracks the modules imported from the app's directory and their files' signatures."""

    def __init__(self, directory: Path, interval: float = 0.1) -> None:
        self.prefix = str(directory).rstrip("/") + "/"
        self.interval = interval
        self.files: dict[str, FileSignature | None] = {}
        self.last_check = 0.0

    def app_modules(self) -> dict[str, ModuleType]:
        found = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and path.startswith(self.prefix):
                found[name] = module
        return found

    def snapshot(self, extra: Sequence[str] = ()) -> None:
        """Record the files of the app's modules (and `extra` ones) as the unchanged baseline."""
        paths = [m.__file__ for m in self.app_modules().values() if m.__file__]
        paths += [p for p in extra if p.startswith(self.prefix)]
        self.files = {path: _signature(path) for path in paths}
        self.last_check = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last_check >= self.interval

    def changed(self) -> list[str]:
        """Files whose signature differs from the baseline (the caller rate-limits checks)."""
        self.last_check = time.monotonic()
        return [path for path, sig in self.files.items() if _signature(path) != sig]

    def unload(self) -> dict[str, ModuleType]:
        """Remove the app's modules from sys.modules so the next import reads them afresh."""
        removed = self.app_modules()
        for name in removed:
            del sys.modules[name]
        importlib.invalidate_caches()
        return removed

    @staticmethod
    def restore(modules: dict[str, ModuleType], fresh: dict[str, ModuleType]) -> None:
        """Undo a failed re-import: drop the half-imported modules, put the old ones back."""
        for name in fresh:
            sys.modules.pop(name, None)
        sys.modules.update(modules)
