# Two entry points: `make demo` (the main job) and `make test`. Each sets up its own venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: torch 2.11 is the newest release with a matching torchaudio on PyPI.
# GPU users: install the torch/torchaudio pair for your CUDA first, then `pip install -e .[audio]`.
TORCH_PINS ?= torch==2.11.* torchaudio==2.11.*

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: setup test demo bench
setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) -m sadakit demo --out demo-output

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_sdxl.py
