# Two commands from a fresh clone (see README.md):
#   make run    set up .venv if needed, then run the workflow on the embedded default
#   make test   set up .venv if needed, then run the test suite
# Set-up is offline-friendly: PyPI only, torch 2.13.0 installed first (a CPU build
# here; a range admitting newer releases would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhf-audit-installed
CORES ?= all

.PHONY: setup run test report lint clean-results

$(STAMP): pyproject.toml envs/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c envs/constraints.txt -e ".[dev,slurm]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -q

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --report results/report.html

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results .snakemake
