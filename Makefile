# The two commands of the README: `make demo` and `make test`. Each sets up everything it needs
# on a fresh machine (Debian packages, a virtualenv with pinned packages) and is safe to re-run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Where torch 2.13.0 comes from. Empty (the default): pip's own indexes, i.e. PyPI, whose Linux build
# carries CUDA and runs on a CPU too (machines with a CPU build of torch on disk take that one).
# Another build: PyTorch's own wheel index for it, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     CPU only, a much smaller download
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126   a GPU node with CUDA 12.6
# The virtualenv is built once: run `make clean` before switching builds.
TORCH_INDEX ?=

.PHONY: setup system-deps services demo test lint clean

# Real DICOM tools for the tests (dciodvfy from dicom3tools, dcmdump from dcmtk); bubblewrap and
# libseccomp confine a job's model process (connector/compute/isolation.py).
system-deps:
	@command -v dciodvfy >/dev/null && command -v dcmdump >/dev/null && command -v bwrap >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dicom3tools dcmtk \
	    bubblewrap libseccomp2; }

# PostgreSQL runs on these machines; start it if it has stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
	  { command -v pg_ctlcluster >/dev/null && $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; } || \
	  echo "warning: PostgreSQL is not running at 127.0.0.1:5432"

$(STAMP): pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip==25.3
	# torch first and pinned, from TORCH_INDEX when given, so that no dependency picks another build. The
	# lock pins it without a local version (+cpu, +cu126): the constraints below accept whichever it is.
	$(BIN)/pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
	# The embedded OPA engine: its metadata claims Python >= 3.14 but it runs on 3.11 (tests/test_policy_engine.py).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --ignore-requires-python opa-golib-python-bindings==0.4.4
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/connector demo

test: system-deps services setup
	$(BIN)/ruff check connector catalog tests benchmarks
	$(BIN)/mypy
	REQUIRE_POSTGRES_TESTS=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check connector catalog tests benchmarks
	# The type check; what it covers and how strictly: [tool.mypy] in pyproject.toml.
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-data .pytest_cache .ruff_cache .mypy_cache
