# The README's commands. Each sets up what it needs first (a virtual environment in .venv).
#   make run    the workflow on the default config, locally (GPUs if present, else the CPU)
#   make demo   the same on a generated SYNTHETIC dataset: offline, about a minute
#   make status where each run stands (ARGS="--configfile my.yaml --watch 30")
#   make test   the whole test suite (starts a real single-node SLURM; needs root for apt)
#   make benchmark  the benchmarks (snakemake benchmark; results/benchmark/)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# The rules call `python`: make it this environment's.
export PATH := $(BIN):$(PATH)
# Extra arguments for snakemake or pytest, e.g. make run ARGS="--configfile my.yaml"
ARGS ?=

.PHONY: setup run demo status test lint benchmark

# The RO-Crate validator's pins go in without their dependencies: every roc-validator
# release asks for rich<14, import-linter for rich>=14.2 (it runs with either).
VALIDATOR = tests/rocrate/requirements-validator.txt
$(VENV)/.installed: requirements.txt requirements-dev.txt $(VALIDATOR)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r $(VALIDATOR)
	touch $@

# `snakemake --profile slurm` typed in this folder finds ./slurm, a link to profiles/slurm:
# Snakemake looks for a profile by name in the working folder before your config folders.
# Nothing is written there; a profile of yours named slurm is left as it is, and named.
setup: $(VENV)/.installed
	@for own in "$${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake/slurm" /etc/xdg/snakemake/slurm; do \
		if [ -e "$$own" ] && ! [ "$$own" -ef profiles/slurm ]; then \
			echo "note: in this folder, --profile slurm is this workflow's (./slurm -> profiles/slurm)," \
				"not yours in $$own, which Snakemake finds elsewhere; to use yours here: --profile $$own"; \
		fi; \
	done

run: setup
	@echo "Running the workflow locally on config/config.yaml (profiles/local)."
	@echo "Training uses two GPUs if present, else one, else the CPU: results/logs/train_model_parallel/ says which."
	snakemake --profile profiles/local $(ARGS)

demo: setup
	@echo "Offline demo on SYNTHETIC data in FashionMNIST's format (config/demo.yaml)."
	snakemake --profile profiles/local --configfile config/demo.yaml $(ARGS)

# Where each run stands (finished, training, queued, requeued, failed, ...): read only.
# make status ARGS="--configfile my.yaml --watch 30"
status: setup
	python workflow/scripts/status.py $(ARGS)

benchmark: setup
	snakemake benchmark --profile profiles/local $(ARGS)

# Two workers (pytest-xdist): the SLURM tests, which mostly wait on the test cluster, run in
# one while the other trains; a file's tests, and the shared workflow's, stay together
# (xdist_group in tests/conftest.py). The test clusters (one node; three, which the
# multinode tests start themselves) are stopped again afterwards if this run started them;
# one that was already up is left up.
PYTEST ?= pytest -n 2
# The three-node cluster is always the default one (its own state folder, name and ports).
MULTI_NODE = env -u SLURM_TEST_STATE -u SLURM_TEST_CLUSTER -u SLURM_TEST_CTLD_PORT \
	-u SLURM_TEST_SLURMD_PORT -u SLURM_TEST_DBD_PORT SLURM_TEST_NODES=3
test: setup
	@if bash tests/slurm/start_cluster.sh --is-running; then started=; else started=yes; fi; \
	if $(MULTI_NODE) bash tests/slurm/start_cluster.sh --is-running; then multi=; else multi=yes; fi; \
	bash tests/slurm/start_cluster.sh || exit $$?; \
	status=0; $(PYTEST) $(ARGS) || status=$$?; \
	if [ -n "$$started" ]; then bash tests/slurm/stop_cluster.sh; fi; \
	if [ -n "$$multi" ]; then $(MULTI_NODE) bash tests/slurm/stop_cluster.sh; fi; \
	exit $$status

lint: setup
	snakemake --lint
	snakefmt --check Snakefile workflow
	ruff check .
	ruff format --check .
	PYTHONPATH=workflow/scripts lint-imports
