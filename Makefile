# The two commands the README starts with. Both create .venv at the repo root
# (or reuse it while pyproject.toml and the interpreter are unchanged: the
# llama-cpp-python build takes minutes and is never redone needlessly).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# llama.cpp is compiled with -march=native. Some x86 VMs advertise AMX but
# fault on its instructions (SIGILL in the first matrix product of a prompt),
# so its AMX kernels are left out; everything else the CPU has is used.
ifeq ($(shell uname -m),x86_64)
LLAMA_FLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
INPUTS_HASH := $(shell (cat pyproject.toml; echo '$(LLAMA_FLAGS)') | sha256sum | cut -c1-16)-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STAMP := $(VENV)/.installed-$(INPUTS_HASH)

.PHONY: demo test lint bench env native browser web

demo: $(STAMP)
	$(PY) examples/demo.py

test: lint browser web
	$(PY) -m pytest

# The chat page's tests drive Debian's chromium (never a browser download). `make test` installs it where it
# may: as root, or with a sudo that asks no password; elsewhere those tests are skipped, and say how to get it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	    echo "chromium is missing and cannot be installed without root: the chat page's tests will be skipped" \
	      "(sudo apt-get install chromium)"; exit 0; fi; \
	  echo "installing Debian's chromium for the chat page's tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; }

# The chat page's markdown renderer and sanitizer, from the npm registry (web/build.py: `npm ci`, then a copy into
# the package; nothing to do when the copies match web/package-lock.json). Installs Debian's npm where it may.
web:
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	    echo "npm is missing: install it (sudo apt-get install nodejs npm), then run make again"; exit 1; fi; \
	  echo "installing Debian's npm for the chat page's scripts"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    nodejs npm >/dev/null; }
	$(PYTHON) web/build.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# `make bench` sets our figures beside native llama.cpp's when `make native` has built it (or when
# LLAMA_NATIVE_DIR names a directory holding llama-server, llama-bench and llama-batched-bench).
LLAMA_NATIVE_DIR ?= $(wildcard .native/bin)
bench: $(STAMP)
	LLAMA_NATIVE_DIR="$(LLAMA_NATIVE_DIR)" $(PY) -m bench

# llama.cpp's own binaries from the pinned llama-cpp-python sdist, into .native/bin (about 6 minutes).
native:
	PYTHON=$(PYTHON) bench/build-native.sh .native

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CFLAGS="$(LLAMA_FLAGS)" CXXFLAGS="$(LLAMA_FLAGS)" $(PY) -m pip install --quiet --no-cache-dir -e ".[default-model,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
