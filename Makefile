# Two entry points: `make demo` and `make test`. Each installs the locked set of versions
# (uv.lock, with hashes) into .venv first, then checks that torch and torchaudio load together.
#
# uv itself is installed by pip from tools/uv-requirements.txt (exact version, hashes) into
# .tools/, so nothing but python3 >= 3.10 has to be on the machine.
# `make lock` re-resolves uv.lock on purpose; run `make test` before committing the result.
VENV ?= .venv
PY := $(VENV)/bin/python
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# Use the machine's python3, never a downloaded interpreter; install into $(VENV).
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := python3

$(UV): tools/uv-requirements.txt
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --require-hashes --no-deps -r tools/uv-requirements.txt
	touch $@

$(VENV)/.installed: uv.lock pyproject.toml $(UV)
	$(UV) sync --locked --quiet --extra test
	$(PY) -m sadakit doctor --quiet
	touch $@

.PHONY: setup test demo bench lock doctor
setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) -m sadakit demo --out demo-output

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_sada.py --pipeline tiny:sdxl:medium

doctor: $(VENV)/.installed
	$(PY) -m sadakit doctor

lock: $(UV)
	$(UV) lock --upgrade
