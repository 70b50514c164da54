"""Parsing app strings and telling an app's kind (pure functions; the import paths are tested
through real workers)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from wsgiref.validate import validator

import pytest

from ripsvc.apploader import AppSpec, BadImportString, NotAnApp, detect_kind, parse_spec
from ripsvc.exitcodes import ExitCode
from tests.support.procs import EXAMPLES, TEST_APPS


def test_directory_means_its_app_py():
    spec = parse_spec(str(EXAMPLES / "hello"))
    assert (spec.module, spec.attr, spec.directory) == ("app", "app", EXAMPLES / "hello")


def test_relative_directory_resolves_against_cwd():
    spec = parse_spec("hello", cwd=EXAMPLES)
    assert spec.directory == EXAMPLES / "hello"


def test_file_with_and_without_attribute():
    path = TEST_APPS / "errors_app.py"
    assert parse_spec(str(path)).attr == "app"
    spec = parse_spec(f"{path}:other.attr")
    assert (spec.module, spec.attr, spec.directory) == ("errors_app", "other.attr", TEST_APPS)


def test_module_string_uses_cwd():
    spec = parse_spec("pkg.web:application", cwd=Path("/srv"))
    assert (spec.module, spec.attr, spec.directory) == ("pkg.web", "application", Path("/srv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no app given"),
        ("pkg:", "nothing after ':'"),
        ("pkg:1x", "is not an attribute name"),
        ("just_a_module", "must be given as module:attr"),
        ("bad-name:app", "is not a module name"),
        ("/no/such/file.py", "does not exist"),
        (str(EXAMPLES), "has no app.py"),
        (str(EXAMPLES / "hello" / "VERSION") + ":app", "is not a .py file"),
    ],
)
def test_bad_strings_say_what_is_wrong(text, message):
    with pytest.raises(BadImportString, match=message):
        parse_spec(text)


@pytest.mark.parametrize("example, kind", [("hello", "asgi"), ("hello_wsgi", "wsgi"),
                                           ("hello_aiohttp", "aiohttp")])
def test_telling_the_kind_imports_aiohttp_only_for_aiohttp_apps(example, kind):
    # Importing aiohttp costs a worker 150-250 ms of CPU at every start (its client builds TLS
    # contexts), which every rolling restart and recycle pays; only aiohttp apps need it.
    program = (
        "import sys\n"
        "from ripsvc.apploader import detect_kind, import_app, parse_spec\n"
        f"spec = parse_spec({str(EXAMPLES / example)!r})\n"
        "print(detect_kind(import_app(spec), spec), 'aiohttp' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.split() == [kind, str(kind == "aiohttp")]


# -- telling the kind: by what the object is, not by counting parameters ----------------------

async def asgi_function(scope, receive, send):
    pass


class AsgiObject:
    async def __call__(self, scope, receive, send):
        pass


class AwaitableAsgi:
    """An ASGI 3 app as a class: calling it makes an awaitable (uvicorn takes it too)."""

    def __init__(self, scope, receive, send):
        pass

    def __await__(self):
        return iter(())


class Asgi2:
    def __init__(self, scope):
        pass

    async def __call__(self, receive, send):
        pass


def wsgi_function(environ, start_response):
    return []


def wsgi_with_exc_info(environ, start_response, exc_info=None):
    return []


def unwrapped_decorator(inner):
    def wrapper(*args, **kwargs):  # no functools.wraps
        return inner(*args, **kwargs)
    return wrapper


class WsgiObject:
    def __call__(self, environ, start_response):
        return []


class WsgiClass:
    """PEP 3333's example: the class is the app, an instance the response's iterable."""

    def __init__(self, environ, start_response):
        pass

    def __iter__(self):
        yield b""


def sync_asgi_shape(scope, receive, send):
    pass


def factory():
    return wsgi_function


SPEC = AppSpec("mod", "app", Path("/srv"))


@pytest.mark.parametrize(("app", "kind"), [
    (asgi_function, "asgi"),
    (AsgiObject(), "asgi"),
    (functools.partial(asgi_function, {}), "asgi"),
    (AwaitableAsgi, "asgi"),
    (wsgi_function, "wsgi"),
    (wsgi_with_exc_info, "wsgi"),
    (unwrapped_decorator(wsgi_function), "wsgi"),
    (validator(wsgi_function), "wsgi"),
    (functools.partial(wsgi_with_exc_info, exc_info=None), "wsgi"),
    (WsgiObject(), "wsgi"),
    (WsgiClass, "wsgi"),
])
def test_the_kind_follows_what_the_object_is(app, kind):
    assert detect_kind(app, SPEC) == kind


@pytest.mark.parametrize(("app", "message"), [
    ({}, "mod:app is a dict, not an app"),
    (Asgi2, "mod:app is a class whose instances take (receive, send): an ASGI 2 app, which is "
            "not supported; give an ASGI 3 callable, a WSGI callable or an aiohttp Application"),
    (WsgiObject, "mod:app is a class whose instances are neither awaitable (ASGI 3) nor "
                 "iterable (WSGI): not an app (an instance of it, perhaps?)"),
    (sync_asgi_shape, "mod:app cannot be called as a WSGI app, app(environ, start_response): "
                      "its signature is (scope, receive, send) (missing a required argument: "
                      "'send'); nor is it an ASGI 3 app, an async callable (`async def`, or an "
                      "object whose __call__ is `async def`), nor an aiohttp Application"),
    (factory, "mod:app cannot be called as a WSGI app, app(environ, start_response): its "
              "signature is () (too many positional arguments); nor is it"),
])
def test_what_cannot_be_an_app_is_refused_at_load(app, message):
    with pytest.raises(NotAnApp) as error:
        detect_kind(app, SPEC)
    assert str(error.value).startswith(message)


def test_a_missing_app_names_the_callables_that_look_like_apps(start_worker):
    # A Django project's wsgi.py calls its app `application`; a directory means app.py:app.
    worker = start_worker(str(TEST_APPS / "django_site"), ready=False)
    assert worker.wait_exit() == ExitCode.APP_LOAD_ERROR
    path = TEST_APPS / "django_site" / "app.py"
    assert (f"module 'app' ({path}) has no attribute 'app'; callables in it that look like "
            "apps: 'application'\n") in worker.output()


def test_a_missing_app_in_a_module_without_any_says_so(start_worker):
    worker = start_worker(f"{TEST_APPS / 'not_an_app.py'}:application", ready=False)
    assert worker.wait_exit() == ExitCode.APP_LOAD_ERROR
    path = TEST_APPS / "not_an_app.py"
    assert (f"module 'not_an_app' ({path}) has no attribute 'application', nor any callable "
            "that looks like an app\n") in worker.output()
