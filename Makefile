# The two commands the README starts with. Both create .venv at the repo root
# (or reuse it while pyproject.toml and the interpreter are unchanged: the
# llama-cpp-python build takes minutes and is never redone needlessly).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INPUTS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STAMP := $(VENV)/.installed-$(INPUTS_HASH)

.PHONY: demo test lint bench env

demo: $(STAMP)
	$(PY) examples/demo.py

test: lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[default-model,dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
