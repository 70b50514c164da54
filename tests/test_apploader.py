"""Parsing app strings (pure functions; the import paths are tested through real workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ripsvc.apploader import BadImportString, parse_spec
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
