# werkbank: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PREFIX ?= /opt/werkbank
VENV := $(PREFIX)/venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make demo NODES=2: the demo on the multi-node cluster (1: this machine's single-node Slurm).
NODES ?= 1

.PHONY: help install install-dev slurm demo demo-stop multinode multinode-stop test unit integration lint format check-site

help:
	@echo "make demo       bring up Slurm, MLflow and JupyterHub on this machine (as root)"
	@echo "make demo NODES=2  the same on the multi-node cluster: hub on wb-hub, servers on node1/node2"
	@echo "                 (as root; URL on 127.0.0.1:8000, forwarded into the hub's namespace)"
	@echo "make demo-stop  stop everything 'make demo' started (either kind)"
	@echo "make multinode  a 2-node Slurm cluster in network namespaces beside the test cluster (as root)"
	@echo "make multinode-stop  remove it"
	@echo "make test       lint + unit + integration tests against real Slurm/JupyterHub/MLflow"
	@echo "make unit       fast tests only (no services)"
	@echo "make check-site validate hub_config/site.yaml"

install:
	deploy/install.sh

install-dev:
	deploy/install.sh --dev

slurm:
	deploy/slurm-up.sh

# Not root: demo-up.sh falls back to local processes under your account (no install step).
demo:
	deploy/demo-up.sh --nodes "$(NODES)"

demo-stop:
	deploy/demo-down.sh

multinode:
	deploy/multinode-up.sh

multinode-stop:
	deploy/multinode-down.sh

check-site:
	$(VENV)/bin/werkbank-site check hub_config/site.yaml

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: install-dev
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install-dev
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# One pytest run for everything, so the summary line counts every test.
test: lint
	$(PY) -m pytest tests $(PYTEST_ARGS)
