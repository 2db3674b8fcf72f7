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


.PHONY: setup data test test-slow clean help ablations ablation-agc ablation-lambda \
	ablation-layers ablation-depth ablation-width ablation-variants ablation-signal report reference bench bench-quick bench-gpu

help:
	@echo "make setup     virtual env with the locked dependencies (+ Fashion-MNIST via apt)"
	@echo "make test      the test suite (minutes)"
	@echo "make test-slow the long checks marked slow"
	@echo "make ablation-agc|lambda|layers|depth|width|variants|signal|ablations [SCALE=smoke|local|paper] [RUNS_DIR=runs]"
	@echo "make report   reports/index.html: figures, comparison with the paper and the shipped reports/<SCALE>, claim checks [SCALE=...] [RUNS_DIR=runs]"
	@echo "make reference  the runs' report shipped as reports/<SCALE> (then: study readme) [SCALE=local] [GRIDS='agc ...': rebuild only these, keep the rest]"
	@echo "make bench     BENCHMARKS.md + bench/results.json: speed vs PyTorch/timm, MFU, AGC, data (<= 15 min)"
	@echo "make bench-quick  the same, a subset (<= 2 min)"
	@echo "make bench-gpu    on one GPU: NFNet-F0 step + NF-ResNet-50 img/s vs timm + torch.compile (<= 8 min) [GPU_PY=python3]"

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
ablation-variants: setup
	$(call grid,variants)
ablation-signal: setup
	$(call grid,signal)
ablations: ablation-agc ablation-lambda ablation-layers ablation-depth ablation-width ablation-variants ablation-signal

# Whatever results exist (a missing or half-finished grid is shown as such); reports/ by default,
# each cell compared with the shipped reference reports/$(SCALE) where there is one (reference.csv).
report: setup
	$(BIN)/study report --scale $(SCALE) --runs-dir $(RUNS_DIR) --out reports

# The shipped reference: the report, per-grid results.csv without machine paths, no checkpoints.
reference: setup
	$(BIN)/study report --ship --scale $(SCALE) --runs-dir $(RUNS_DIR) --out reports/$(SCALE) $(if $(GRIDS),--only $(GRIDS))

# The benchmark's PyTorch side: its own venv, used by nothing else (bench/requirements-torch.lock).
TORCH_VENV := .venv-torch
$(TORCH_VENV)/.installed: bench/requirements-torch.lock
	test -x $(TORCH_VENV)/bin/python || $(PY) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements-torch.lock
	touch $@

bench: setup $(TORCH_VENV)/.installed
	$(BIN)/python -m bench.run --runs-dir $(RUNS_DIR)
bench-quick: setup $(TORCH_VENV)/.installed
	$(BIN)/python -m bench.run --quick --runs-dir $(RUNS_DIR)
# On one GPU, by that machine's own Python (jax[cuda], torch, timm): no venv, so no network needed.
GPU_PY ?= python3
bench-gpu:
	$(GPU_PY) -m bench.gpu

clean:
	rm -rf $(VENV) .pytest_cache
