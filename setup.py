"""The build: pyproject.toml says everything but this, the hot-path modules (ripsvc/compiled.py)
compiled to C extensions by mypyc from their type-annotated source.

mypyc type-checks what it compiles and uses the types of what it imports: `make compile`
builds in the virtualenv and the Debian build with its Build-Depends installed (an isolated
build without them still compiles, with those calls left untyped).
RIPSVC_COMPILE=0 builds the plain Python package instead (the balancer and workers log that
their hot path is interpreted).
"""

import os
import sys
from pathlib import Path

from setuptools import setup

root = Path(__file__).resolve().parent
sys.path.insert(0, str(root))  # a PEP 517 backend does not put the tree on the path

from ripsvc.compiled import source_paths  # noqa: E402

ext_modules = []
if os.environ.get("RIPSVC_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    paths = [str(path.relative_to(root)) for path in source_paths(root)]
    # One group named into the package: its shared library is ripsvc/_hotpath__mypyc*.so
    # (an unnamed group would be a top-level module named after a hash).
    # Type errors matter in the compiled modules only (the lint runs mypy on all of them):
    # an older mypy (Debian 12's 1.0.1) reads some of the others differently.
    options = ["--follow-imports=silent", "--ignore-missing-imports"]
    ext_modules = mypycify([*options, *paths], opt_level="3",
                           separate=[(paths, "ripsvc._hotpath")])
    # Each module's own extension is a shim that calls only into the group's library through
    # Python: linked to libc explicitly so that it names its prerequisite like any library.
    for extension in ext_modules:
        extension.extra_link_args += ["-Wl,--no-as-needed", "-lc"]

setup(ext_modules=ext_modules)
