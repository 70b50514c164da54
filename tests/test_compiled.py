"""The hot path runs compiled (what the package ships), and says so when it is not."""

from __future__ import annotations

import importlib
import os
import sys

from ripsvc import compiled


def test_every_hot_path_module_runs_as_built() -> None:
    for name in compiled.MODULES:
        importlib.import_module(name)
    ok, line = compiled.state()
    assert ok is (os.environ.get("RIP_MYPYC", "1") != "0"), line
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
    if os.environ.get("RIP_MYPYC", "1") != "0":
        assert line == "hot path partly compiled; interpreted: ripsvc.body"
    else:
        assert line.startswith("hot path interpreted: not compiled with mypyc")
