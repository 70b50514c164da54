"""The hot path runs compiled (what the package ships), and says so when it is not."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

from ripsvc import compiled
from tests.support import narrowing


def test_every_hot_path_module_runs_as_built() -> None:
    for name in compiled.MODULES:
        importlib.import_module(name)
    ok, line = compiled.state()
    assert ok is (os.environ.get("RIPSVC_COMPILE", "1") != "0"), line
    loaded, interpreted = compiled.interpreted()
    assert loaded == list(compiled.MODULES)
    assert interpreted == ([] if ok else loaded)


def test_a_partly_compiled_hot_path_names_the_interpreted_modules() -> None:
    for name in compiled.MODULES:
        importlib.import_module(name)
    real = sys.modules["ripsvc.body"]
    stand_in = type(real)("ripsvc.body")
    stand_in.__file__ = "/somewhere/ripsvc/body.py"
    sys.modules["ripsvc.body"] = stand_in
    try:
        ok, line = compiled.state()
    finally:
        sys.modules["ripsvc.body"] = real
    assert not ok
    if os.environ.get("RIPSVC_COMPILE", "1") != "0":
        assert line == "hot path partly compiled; interpreted: ripsvc.body"
    else:
        assert line.startswith("hot path interpreted: not compiled with mypyc")


def test_no_narrowed_attribute_is_read_after_a_call() -> None:
    """mypyc checks a read against mypy's narrowed type, which a call in between may have made
    wrong: a TypeError only in the compiled build (tests/support/narrowing.py)."""
    root = Path(__file__).resolve().parent.parent
    assert narrowing.findings(compiled.source_paths(root)) == []


def test_the_narrowing_check_finds_the_pattern_of_the_pipelining_bug(tmp_path: Path) -> None:
    """The shape of issue 19's bug (front.py `_finish`, compiled only): an attribute set to
    None, a call that sets it again, then a test of it in a loop."""
    source = tmp_path / "shape.py"
    source.write_text(textwrap.dedent('''
        class Item: ...

        class Conn:
            def __init__(self) -> None:
                self.current: Item | None = None
                self.pending: list[Item] = []

            def start(self, item: Item) -> None:
                self.current = item

            def finish(self) -> None:
                self.current = None
                while self.pending and self.current is None:
                    self.start(self.pending.pop())

            def fine(self) -> None:
                current = self.current
                self.start(Item())
                if current is None:
                    self.current = None
    '''))
    found = narrowing.findings([source])
    assert found and all(":finish:" in line and "self.current" in line for line in found)
