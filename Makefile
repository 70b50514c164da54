# `make run` serves examples/hello; `make test` runs every check. Both set up what they need
# first: Debian packages (as root) and a virtualenv in .venv with the project installed editable.

PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# python3-venv for the virtualenv; a compiler, headers and libsystemd for systemd-python.
# haproxy (a real PROXY-protocol peer) and mkcert (a certificate source) for the edge tests.
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libsystemd-dev curl procps dbus \
	haproxy mkcert
STAMP := $(VENV)/.installed
# The same tests against Debian 12's own python3-* packages, which the .deb depends on (and
# the frameworks of the test apps from Debian 12 too: the versions its users have).
DEBIAN_VENV := .venv-debian
DEBIAN_PACKAGES := python3-aiohttp python3-httptools python3-uvloop python3-systemd \
	python3-dbus-fast python3-jinja2 python3-pyroute2 python3-cryptography \
	python3-prometheus-client python3-wsproto python3-venv python3-brotli \
	python3-django python3-flask python3-fastapi python3-uvicorn gunicorn
DEBIAN_STAMP := $(DEBIAN_VENV)/.installed
PORT ?= 8000

# The .deb: built from a copy of the tree with packaging/debian as debian/. Its Build-Depends
# (packaging/debian/control; tests/test_deb.py checks that this list holds them), and lintian.
DEB_BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-idna \
	python3-jinja2 python3-setuptools python3-mypy python3-httptools python3-systemd lintian
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ripsvc/__init__.py)
# Architecture-dependent: the hot path is compiled (setup.py).
DEB := build/deb/rip-server_$(VERSION)_$(shell dpkg --print-architecture).deb

.PHONY: run test lint unit unit-interpreted unit-debian deps compile bench clean deb

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/apt-ensure
	scripts/apt-ensure $(APT_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The editable install only points at the tree; `compile` builds the extensions in it.
	RIPSVC_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $@

# The hot path (ripsvc/compiled.py) compiled by mypyc into the tree, next to its source, and
# rebuilt when any module changes: mypyc reads the types of everything the hot path imports.
# Both virtualenvs run the same CPython (/usr/bin/python3), so both use these extensions.
COMPILED := ripsvc/.compiled
compile: $(COMPILED)

# RIPSVC_COMPILE=0 make …: the plain Python package (the extensions are removed, nothing built).
# (A build switch, not a setting: settings are the RIP_* variables.)
ifeq ($(RIPSVC_COMPILE),0)
.PHONY: $(COMPILED)
endif
$(COMPILED): $(STAMP) setup.py $(wildcard ripsvc/*.py ripsvc/*/*.py)
ifeq ($(RIPSVC_COMPILE),0)
	find ripsvc -name '*.so' -delete
	rm -f $@
else
	mkdir -p build
	$(BIN)/python setup.py -q build_ext --inplace >build/mypyc.log 2>&1 || \
		{ tail -40 build/mypyc.log; exit 1; }
	touch $@
endif

# On 127.0.0.1 only, like rip-server's own default: the example is not put on the network.
# A port already taken is said before rip-server starts, with the way to choose another.
run: deps compile
	@$(BIN)/python -c 'import socket; s = socket.socket(); \
		s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", $(PORT)))' \
		2>/dev/null || { echo "make run: port $(PORT) on 127.0.0.1 is already in use;" \
		"choose another port: PORT=$$(($(PORT) + 1)) make run" >&2; exit 1; }
	@echo "make run: serving examples/hello on http://127.0.0.1:$(PORT)/ (Ctrl-C stops it;" \
		"another port: PORT=9000 make run)"
	$(BIN)/rip-server examples/hello w:2 http:127.0.0.1:$(PORT)

lint: deps
	$(BIN)/ruff check ripsvc tests bench setup.py
	$(BIN)/mypy ripsvc

unit: deps compile
	$(BIN)/pytest

# The fast part of the tests, in about a minute: what the markers slow, systemd and deb leave
# out (tests/conftest.py). `make test` runs everything.
.PHONY: unit-fast
unit-fast: deps compile
	$(BIN)/pytest -m "not slow"

$(DEBIAN_STAMP): pyproject.toml scripts/apt-ensure
	scripts/apt-ensure $(DEBIAN_PACKAGES)
	test -x $(DEBIAN_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(DEBIAN_VENV)
	$(DEBIAN_VENV)/bin/pip install -q 'pytest>=7.2' 'pytest-timeout>=2.1' 'hypothesis>=6.36'
	RIPSVC_COMPILE=0 $(DEBIAN_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# Runtime libraries from Debian (dist-packages), only the test tools from PyPI.
unit-debian: $(DEBIAN_STAMP) compile
	$(DEBIAN_VENV)/bin/python -c 'import aiohttp, httptools; \
		assert aiohttp.__file__.startswith("/usr/lib/python3/"), aiohttp.__file__; \
		print("Debian packages: aiohttp", aiohttp.__version__)'
	$(DEBIAN_VENV)/bin/python -m pytest

# The adversarial tests once more, against the interpreted build, from a copy of the tree
# without the extensions: compiled and interpreted must behave the same (SPEC §8).
INTERPRETED := build/interpreted
ADVERSARIAL := tests/test_compiled.py tests/test_availability.py tests/test_balancer_machine.py \
	tests/test_fuzz.py tests/test_worker_apps.py tests/test_conformance_wsgi.py \
	tests/test_conformance_asgi.py tests/test_streaming.py
unit-interpreted: deps
	rm -rf $(INTERPRETED) && mkdir -p $(INTERPRETED)
	tar -c --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude='*.egg-info' \
		--exclude=__pycache__ --exclude='.*_cache' --exclude='*.so' \
		--exclude=./ripsvc/.compiled . | tar -x -C $(INTERPRETED)
	cd $(INTERPRETED) && RIPSVC_COMPILE=0 $(abspath $(BIN))/python -m pytest $(ADVERSARIAL)

# Every part runs, and a failure of one does not hide the others'.
test:
	@failed=""; for part in lint unit unit-interpreted unit-debian; do \
		$(MAKE) --no-print-directory $$part || failed="$$failed $$part"; done; \
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed"; exit 1; fi

# Built again only when a file it is built from changed (the tests ask for it several times):
# the tree as the recipe copies it, packaging/debian included.
DEB_SOURCES := $(shell find . \( -name .git -o -name '.venv*' -o -name build \
	-o -name '*.egg-info' -o -name __pycache__ -o -name '.*_cache' \) -prune \
	-o -type f ! -name '*.so' ! -name .compiled -print)

deb: $(DEB)

$(DEB): $(DEB_SOURCES)
	scripts/apt-ensure $(DEB_BUILD_PACKAGES)
	rm -rf build/deb
	$(MAKE) -s deb-tree DEB_TREE=build/deb/rip-server-$(VERSION)
	@# Debian's own interpreter and tools, whatever else PATH holds (pyenv, a venv)
	cd build/deb/rip-server-$(VERSION) && \
		env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	@echo "make deb: $(DEB)"

# The source tree of the package, in DEB_TREE (a new directory): what `make deb` builds, and
# what tests/test_deb.py builds again in a clean Debian root holding only the Build-Depends.
.PHONY: deb-tree
deb-tree:
	@test -n "$(DEB_TREE)" || { echo "make deb-tree: give DEB_TREE=DIR" >&2; exit 2; }
	@test ! -e "$(DEB_TREE)" || { echo "make deb-tree: $(DEB_TREE) exists" >&2; exit 2; }
	mkdir -p "$(DEB_TREE)"
	tar -c --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude='*.egg-info' \
		--exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
		--exclude=.ruff_cache --exclude=./packaging --exclude='*.so' \
		--exclude=./ripsvc/.compiled . | tar -x -C "$(DEB_TREE)"
	cp -rL packaging/debian "$(DEB_TREE)/debian"

bench: deps compile
	scripts/apt-ensure wrk
	$(BIN)/python bench/worker.py

clean:
	rm -rf $(VENV) $(DEBIAN_VENV) .pytest_cache .mypy_cache .ruff_cache build $(COMPILED)
	find ripsvc -name '*.so' -delete
