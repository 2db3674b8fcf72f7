# Every target sets itself up: a fresh clone needs no manual step (`make test` creates .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

SCALE ?= local
BACKEND ?= local
RUNS_DIR ?= runs
PROFILE ?= slurm/local.yaml

GRIDS := agc agc-lambda agc-layers depth width

.PHONY: setup data test test-slow clean help ablations ablation-agc ablation-lambda \
	ablation-layers ablation-depth ablation-width

help:
	@echo "make setup     virtual env with the locked dependencies (+ Fashion-MNIST via apt)"
	@echo "make test      the test suite (minutes)"
	@echo "make test-slow the long checks marked slow"
	@echo "make ablation-agc|lambda|layers|depth|width|ablations [SCALE=smoke|local|paper] [RUNS_DIR=runs]"

setup: $(STAMP) data

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Debian's dataset-fashion-mnist package, where apt is usable (root); otherwise say how to get it.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) && \
	  echo "installed dataset-fashion-mnist into $(FMNIST)"; \
	else echo "note: Fashion-MNIST not found in $(FMNIST); install Debian's dataset-fashion-mnist" \
	  "or pass a data directory"; fi

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# A grid: train what is missing (a finished grid trains nothing), then gather the table.
define grid
	$(BIN)/study grid run ablations/$(1).yaml --scale $(SCALE) --backend $(BACKEND) --profile $(PROFILE) --runs-dir $(RUNS_DIR)
	$(BIN)/study results ablations/$(1).yaml --scale $(SCALE) --runs-dir $(RUNS_DIR)
endef

ablation-agc: setup
	$(call grid,agc)
ablation-lambda: setup
	$(call grid,agc-lambda)
ablation-layers: setup
	$(call grid,agc-layers)
ablation-depth: setup
	$(call grid,depth)
ablation-width: setup
	$(call grid,width)
ablations: ablation-agc ablation-lambda ablation-layers ablation-depth ablation-width

clean:
	rm -rf $(VENV) .pytest_cache
