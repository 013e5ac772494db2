# vafusion developer targets. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test bench clean

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

test: $(STAMP) ## install and run the test suite
	$(BIN)/python -m pytest -q

bench: $(STAMP) ## run benchmarks/ and write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run_all.py

clean: ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache
