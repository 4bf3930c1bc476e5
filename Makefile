# whisperctl developer tasks. `make test` and `make demo` set everything up themselves on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
# A pinned CPU build of PyTorch, installed before anything that depends on torch: an unpinned `torch`
# on a fresh venv pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The reference implementation, for conformance tests and benchmarks only. Its model and loader need
# these four; --no-deps keeps it from pulling triton (a GPU compiler the CPU tests never use).
WHISPER_SPEC ?= openai-whisper==20250625
WHISPER_DEPS ?= tiktoken numba more-itertools tqdm
STAMP := $(VENV)/.installed
# The chaos suite (tests/chaos): `make test` runs 120 seeded trials, `make chaos` the full 1,000.
CHAOS_TRIALS ?= 1000
CHAOS_SEED ?= 6

.PHONY: help install espeak-ng demo test chaos hostile check bench clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP) espeak-ng ## Build .venv: pinned CPU torch, whisperctl (editable) with test extras, openai-whisper

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH_SPEC)
	@# openai-whisper goes last and alone: with --no-deps pip checks nothing, so it has no missing triton to
	@# complain about. On a venv that has it already (pyproject.toml changed), it is taken out first, or the
	@# install below would see its triton requirement again.
	@$(PIP) uninstall --quiet --yes openai-whisper 2>/dev/null || true
	$(PIP) install --quiet -e '.[torch,test]' $(WHISPER_DEPS)
	$(PIP) install --quiet --no-deps $(WHISPER_SPEC)
	@touch $@

# The voice of the format conformance tests (tests/formats_lab.py), from Debian's packages when missing, as
# root or through `sudo -n` (tests/nginx.py installs nginx the same way); without either the tests skip, or
# fail in CI.
espeak-ng:
	@command -v espeak-ng >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo="sudo -n"; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq espeak-ng >/dev/null; \
	} || echo "espeak-ng could not be installed (apt-get install espeak-ng as root)" >&2

demo: install ## Run the main job end to end on the built-in offline demo
	$(BIN)/python demo/run.py

test: install ## Run the whole test suite
	$(BIN)/pytest

chaos: install ## Run the chaos suite at full size (1,000 seeded trials; figures in bench/results/chaos.json)
	CHAOS_TRIALS=$(CHAOS_TRIALS) CHAOS_SEED=$(CHAOS_SEED) CHAOS_REPORT=bench/results/chaos.json \
		$(BIN)/pytest -q tests/chaos

hostile: install ## Run the hostile-server suite alone (figures in bench/results/hostile.json)
	HOSTILE_REPORT=bench/results/hostile.json $(BIN)/pytest -q tests/hostile

check: install ## ruff + mypy (strict) on src/
	$(BIN)/ruff check src tests bench demo
	$(BIN)/ruff format --check src tests bench demo
	$(BIN)/mypy

bench: install ## Run the benchmarks (figures go to bench/results/; installs nginx, aria2 and curl with apt)
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/download.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/convert.py

clean: ## Remove the venv, caches and demo/bench outputs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo bench/results build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
