# anomaly_lab: `make help` lists the targets. Every target that runs Python sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= cpu
# torch==2.13.0: on this project's machines the CPU build comes from local disk. Elsewhere, a CPU-only
# machine may add TORCH_INDEX=https://download.pytorch.org/whl/cpu; TORCH=cuda takes a CUDA 12.8 build.
ifeq ($(TORCH),cuda)
TORCH_INDEX ?= https://download.pytorch.org/whl/cu128
endif
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
ARGS ?=

.PHONY: help install train train-gpu test test-slow lint tb clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX_ARG)
	$(PY) -m pip install -q -e '.[dev,onnx]' $(TORCH_INDEX_ARG)
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned stack (TORCH=cuda for a CUDA build)

train: $(VENV)/.installed ## train on CPU on generated synthetic bottles (a few minutes), print test metrics
	$(PY) -m anomaly_lab.train dataset=synthetic_bottles model=unet_small masking=multiscale_grid scoring=riad trainer=cpu $(ARGS)

train-gpu: $(VENV)/.installed ## train the full U-Net at 512px on MVTec bottle on one GPU (DATA=path)
	$(PY) -m anomaly_lab.train dataset=bottles dataset.root=$(or $(DATA),data/mvtec_bottle) model=unet512 masking=grid trainer=gpu $(ARGS)

test: $(VENV)/.installed ## run the default test suite (fast; no real data needed)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed ## run the slow and real-data tests too
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(VENV)/.installed ## ruff and mypy
	$(PY) -m ruff check anomaly_lab tests
	$(PY) -m ruff format --check anomaly_lab tests
	$(PY) -m mypy

tb: $(VENV)/.installed ## TensorBoard on outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
