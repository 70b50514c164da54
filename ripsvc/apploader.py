"""Finding and importing the user's app.

Plain settings travel, loaded things stay: the app is named by a string
(`module:attr`, `path/to/file.py:attr`, or a directory holding `app.py`) and only the worker
imports it. Every failure is an AppLoadError whose message says exactly what went wrong.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

AppKind = Literal["asgi", "wsgi", "aiohttp"]
DEFAULT_ATTR = "app"
_PACKAGE_DIR = str(Path(__file__).resolve().parent) + "/"


class AppLoadError(Exception):
    """The app could not be loaded; str(exc) is the message for the operator."""


class BadImportString(AppLoadError):
    pass


class ModuleNotImportable(AppLoadError):
    pass


class AttributeMissing(AppLoadError):
    pass


class ErrorInApp(AppLoadError):
    """The user's own module raised while being imported; the message carries its traceback."""


class NotAnApp(AppLoadError):
    pass


@dataclass(frozen=True)
class AppSpec:
    """Where an app lives: `module` importable once `directory` is on sys.path."""

    module: str
    attr: str
    directory: Path

    def __str__(self) -> str:
        real = self.directory.resolve()
        shown = self.directory if real == self.directory else f"{self.directory} = {real}"
        return f"{self.module}:{self.attr} (in {shown})"


def absolute_spec(text: str, cwd: Path) -> str:
    """The app string with a path in it made absolute (relative to `cwd`); module:attr as is.
    For a file that is read elsewhere (/etc/rip/APP.toml) or a process started elsewhere."""
    location, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
    if location.endswith(".py") or "/" in location or (cwd / location).is_dir():
        return str(_absolute(cwd / location)) + sep + attr
    return text


def _absolute(path: Path) -> Path:
    """`path` made absolute, its symbolic links kept: a deploy that points a link (current →
    releases/N) elsewhere is followed by each worker started afterwards, and the restart
    file is looked for where the link points now."""
    return Path(os.path.abspath(path))


def parse_spec(text: str, cwd: Path | None = None) -> AppSpec:
    """Turn the operator's app string into an AppSpec; raise BadImportString if it is none."""
    cwd = cwd or Path.cwd()
    if not text:
        raise BadImportString(
            "no app given: use module:attr, path/to/file.py[:attr] or a directory"
        )
    location, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
    if sep and not attr:
        raise BadImportString(f"{text!r}: nothing after ':' (expected an attribute name)")
    attr = attr or DEFAULT_ATTR
    if not all(part.isidentifier() for part in attr.split(".")):
        raise BadImportString(f"{text!r}: {attr!r} is not an attribute name")
    path = _absolute(cwd / location)
    if path.is_dir():
        if not (path / "app.py").is_file():
            raise BadImportString(f"{text!r}: directory {path} has no app.py")
        return AppSpec("app", attr, path)
    if location.endswith(".py") or "/" in location:
        if not path.is_file():
            raise BadImportString(f"{text!r}: {path} does not exist")
        if path.suffix != ".py":
            raise BadImportString(f"{text!r}: {path} is not a .py file")
        return AppSpec(path.stem, attr, path.parent)
    if not sep:
        raise BadImportString(
            f"{text!r} is neither a directory nor a file; a module must be given as module:attr"
        )
    if not all(part.isidentifier() for part in location.split(".")):
        raise BadImportString(f"{text!r}: {location!r} is not a module name")
    return AppSpec(location, attr, _absolute(cwd))


def import_app(spec: AppSpec) -> Any:
    """Import `spec` and return the app object."""
    directory = str(spec.directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, spec.module):
            raise ModuleNotImportable(
                f"could not import module {spec.module!r}: no module named {exc.name!r} "
                f"(searched {directory} and the Python path)"
            ) from None
        raise ErrorInApp(_inside_app("importing", spec, exc)) from exc
    except BaseException as exc:  # the user's module can raise anything, SystemExit included
        raise ErrorInApp(_inside_app("importing", spec, exc)) from exc
    obj: Any = module
    for name in spec.attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            message = (f"module {spec.module!r} ({getattr(module, '__file__', '?')}) "
                       f"has no attribute {spec.attr!r}")
            if obj is module:
                message += _suggestions(module)
            raise AttributeMissing(message) from None
    return obj


def _suggestions(module: Any) -> str:
    """The end of the message for a module that lacks the attribute asked for: the names in it
    that look like apps (a Django project's wsgi.py and asgi.py call theirs `application`)."""
    names = [name for name, value in vars(module).items()
             if not name.startswith("_") and _looks_like_app(value, module.__name__)]
    if not names:
        return ", nor any callable that looks like an app"
    return "; callables in it that look like apps: " + ", ".join(repr(n) for n in names)


def _looks_like_app(value: Any, module_name: str) -> bool:
    if _is_aiohttp_app(value):
        return True
    if inspect.ismodule(value) or inspect.isclass(value) or not callable(value):
        return False
    if inspect.isroutine(value) and getattr(value, "__module__", None) != module_name:
        return False  # a function imported from elsewhere (a framework's helper)
    try:
        return _is_async_callable(value) or _wsgi_call_problem(value) is None
    except Exception:  # a proxy (werkzeug's `request`) raises outside of a request
        return False


def _is_prefix(name: str, module: str) -> bool:
    return module == name or module.startswith(name + ".")


def _inside_app(what: str, spec: AppSpec, exc: BaseException) -> str:
    # Start the traceback at the user's code: the import machinery's frames say nothing.
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
    return f"error raised while {what} {spec.module!r} from {spec.directory}:\n{text}"


def _is_machinery(filename: str) -> bool:
    return filename.startswith((_PACKAGE_DIR, "<frozen")) or "/importlib/" in filename


def detect_kind(app: Any, spec: AppSpec) -> AppKind:
    """Tell an aiohttp Application, an ASGI 3 app and a WSGI app apart by what the object is,
    as hypercorn does: an async callable is ASGI, any other callable WSGI. Parameters are
    not counted: WSGI middleware is often a `(*args, **kwargs)` wrapper (wsgiref's validator,
    a decorator without functools.wraps), and gunicorn serves those. A callable is refused
    only when calling it with (environ, start_response) could never work."""
    if _is_aiohttp_app(app):
        return "aiohttp"
    name = f"{spec.module}:{spec.attr}"
    if not callable(app):
        raise NotAnApp(f"{name} is a {type(app).__name__}, not an app")
    if inspect.isclass(app):
        # Calling a class makes an instance: an ASGI 3 app if the instance is awaitable
        # (uvicorn's test), a WSGI app if it is the response's iterable (PEP 3333's example).
        if _class_attribute(app, "__await__") is not None:
            return "asgi"
        if _is_async(_class_attribute(app, "__call__")):
            raise NotAnApp(
                f"{name} is a class whose instances take (receive, send): an ASGI 2 app, which "
                "is not supported; give an ASGI 3 callable, a WSGI callable or an aiohttp "
                "Application"
            )
        if _class_attribute(app, "__iter__") is None:
            raise NotAnApp(
                f"{name} is a class whose instances are neither awaitable (ASGI 3) nor "
                "iterable (WSGI): not an app (an instance of it, perhaps?)"
            )
    elif _is_async_callable(app):
        return "asgi"
    problem = _wsgi_call_problem(app)
    if problem is not None:
        raise NotAnApp(
            f"{name} cannot be called as a WSGI app, app(environ, start_response): {problem}; "
            "nor is it an ASGI 3 app, an async callable (`async def`, or an object whose "
            "__call__ is `async def`), nor an aiohttp Application"
        )
    return "wsgi"


def _is_aiohttp_app(obj: Any) -> bool:
    # An aiohttp Application exists only if its module was imported by the app, so there is
    # no need to import aiohttp here: that cost every ASGI or WSGI worker 150-250 ms of CPU
    # at each start (aiohttp's client builds its default TLS contexts on import).
    web_app = sys.modules.get("aiohttp.web_app")
    return web_app is not None and isinstance(obj, web_app.Application)


def _is_async(obj: Any) -> bool:
    """A coroutine function, also behind functools.partial or inspect.markcoroutinefunction."""
    return obj is not None and inspect.iscoroutinefunction(obj)


def _is_async_callable(obj: Any) -> bool:
    """An async function, or an object whose __call__ is one (Starlette, Django's handler)."""
    return _is_async(obj) or _is_async(_class_attribute(type(obj), "__call__"))


def _class_attribute(cls: type, name: str) -> Any:
    """`name` as the class's own instances see it (not its metaclass's)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def _wsgi_call_problem(app: Any) -> str | None:
    """Why `app(environ, start_response)` would raise TypeError, or None if it would not."""
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):  # builtins without a signature: trust the WSGI shape
        return None
    try:
        signature.bind(object(), object())
    except TypeError as exc:
        return f"its signature is {signature} ({exc})"
    return None
