# Two commands from a fresh clone (see README.md):
#   make run    set up .venv if needed, then run the workflow on the embedded default
#   make test   set up .venv and the SLURM test's system packages if needed, then run
#               the test suite (the one command CI runs too: .ci/run)
#   make test-fast  the suite without its end-to-end runs (local work; CI runs all)
#   make plan   what a config costs before running it: jobs, tokens, bytes, GPU time
#               (CONFIG=configs/paper.yaml; the embedded default when unset)
# Set-up is offline-friendly: PyPI only, torch 2.13.0 installed first (a CPU build
# here; a range admitting newer releases would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhf-audit-installed
CORES ?= all
CONFIG ?=
# tests/test_slurm.py starts a real single-node SLURM cluster (docs/slurm.md).
SLURM_BINS := slurmctld slurmd sbatch squeue munged

.PHONY: setup run test test-fast test-deps plan report lint clean-results

$(STAMP): pyproject.toml envs/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c envs/constraints.txt -e ".[dev,slurm]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

# Debian's slurm-wlm and munge for the SLURM test: installed when missing and we
# are root (~40 s), otherwise the exact command to run is printed and make fails,
# so a fresh machine never ends in a puzzling test error.
test-deps:
	@missing=""; \
	for b in $(SLURM_BINS); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: installing slurm-wlm and munge (missing:$$missing)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	  else \
	    echo "make test: tests/test_slurm.py needs slurm-wlm and munge (missing:$$missing)."; \
	    echo "Run this once, then make test again:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y slurm-wlm munge"; \
	    exit 1; \
	  fi; \
	fi

# With slurm-client installed and no cluster running, the SLURM executor plugin's
# `scontrol show config` (run whenever snakemake starts) waits ~10 s for a DNS SRV
# lookup on machines without a resolver; an empty config makes it fail at once.
# The cluster test drops this variable for the commands that talk to its cluster.
# Two workers, each taking whole files (module fixtures train an organism once per file);
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP) test-deps
	SLURM_CONF=$${SLURM_CONF:-/dev/null} $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) \
	  --dist loadfile --durations=15

# Local work: everything but the end-to-end runs marked slow (a few minutes). CI runs
# the whole suite (make test).
test-fast: $(STAMP)
	SLURM_CONF=$${SLURM_CONF:-/dev/null} $(BIN)/python -m pytest -q -m "not slow"

plan: $(STAMP)
	$(BIN)/python -m rlhf_audit.plan $(if $(CONFIG),--configfile $(CONFIG))

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --report results/report.html

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results .snakemake
