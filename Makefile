# vafusion developer targets. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := vafusion tests benchmarks tools

.PHONY: help install demo test test-fast lint format bench bench-long clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx]' torch==2.13.0
	touch $(STAMP)

install: $(STAMP) ## create .venv and install vafusion (PyTorch pinned to the CPU build, ==2.13.0)

demo: $(STAMP) ## synth data -> features -> 6-fold CV of fusion and single modalities -> runs/demo/report.md
	$(BIN)/vafusion demo --out runs/demo

test: $(STAMP) ## install and run the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff (lint + format check), codespell, import layers and cycles, module/function sizes
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/codespell $(CODE) docs README.md
	$(BIN)/lint-imports
	$(BIN)/python tools/check_sizes.py vafusion

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

bench: $(STAMP) ## run benchmarks/ and write benchmarks/RESULTS.md (<= 10 min; `make demo` first)
	$(BIN)/python benchmarks/run_all.py

bench-long: $(STAMP) ## bench plus the long cases (60-min memory, whole Aff-Wild2 epoch, 8.3 GB store) -> RESULTS-long.md
	$(BIN)/python benchmarks/run_all.py --long

clean: ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
