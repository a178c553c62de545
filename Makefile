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
# Idle OpenMP threads yield instead of spinning: on a small shared CPU spinning threads thrash (torch 5-40x slower).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install train train-gpu sweep sweep-report tune test test-all test-slow lint tb clean bench-loader benchmark overhead predict export

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
	$(PY) -m anomaly_lab.train dataset=mvtec dataset.root=$(or $(DATA),data/mvtec_bottle) model=unet512 masking=grid trainer=gpu $(ARGS)

# CKPT: a checkpoint of a train run (outputs/runs/<run>/checkpoints/best.ckpt); INPUT: an image, a folder or a glob
# (quoted); OUT: the output folder (default outputs/predict/<date_time>); ARGS: more key=value (score_threshold=...).
predict: $(VENV)/.installed ## score images with a checkpoint: scores.csv, heatmaps, masks (CKPT=... INPUT=... [OUT=...])
	$(if $(CKPT),,$(error CKPT=path/to/best.ckpt is required))$(if $(INPUT),,$(error INPUT=image, folder or glob is required))
	$(PY) -m anomaly_lab.predict ckpt_path=$(CKPT) 'input=$(INPUT)' $(if $(OUT),output=$(OUT)) $(ARGS)

# predict's scoring without writing, warm-up then median of repeats; INPUT defaults to the bottle test images
# ($(DATA)/test); ARGS: any predict setting (batch_size=8 threads=2 stack_passes=true) and repeats=3 warmup=1.
# Prints a markdown table, one row per backend (torch, onnxruntime, openvino, each where installed; their passes
# take turns, so the ratios come from one window): img/s with decoding and maps, forward img/s, image AUROC where
# the folders give the truth, settings, machine, load. ARGS=backend=onnxruntime: that backend's row alone.
.PHONY: bench-predict
bench-predict: $(VENV)/.installed ## predict img/s of torch, onnxruntime and openvino in one table (CKPT=... [INPUT=bottle test] [ARGS=...])
	$(if $(CKPT),,$(error CKPT=path/to/best.ckpt is required))
	$(PY) -m anomaly_lab.tools.bench_predict ckpt_path=$(CKPT) 'input=$(or $(INPUT),$(DATA)/test)' $(if $(findstring backend,$(ARGS)),,backends=all) $(ARGS)

export: $(VENV)/.installed ## export a checkpoint's net and scoring to ONNX beside it, checked in onnxruntime (CKPT=...)
	$(if $(CKPT),,$(error CKPT=path/to/best.ckpt is required))
	$(PY) -m anomaly_lab.export ckpt_path=$(CKPT) format=onnx $(ARGS)

# Two tiers. `make test`: the unit tests, one short training per config group, the learning test and one
# kill-and-resume (3 minutes on 2 idle cores). `make test-all`: that, then every test marked slow (every option
# and experiment, fault subprocesses, sweeps, PostgreSQL, submitit, real data when ../shared/data has it).
# `make test test-all` runs each tier once (make builds a target once), as .ci/run does.
test: $(VENV)/.installed ## the fast tier: unit tests and one short run per config group (3 min on 2 cores)
	$(PY) -m pytest -q $(ARGS)

# The postgres, slurm and openvino extras, for test-all: tests/test_postgres.py starts a PostgreSQL server from the
# pgserver wheel, tests/test_submitit.py sweeps through hydra-submitit-launcher, tests/test_openvino.py checks
# OpenVINO's parity with torch. Where they cannot be installed those skip.
$(VENV)/.installed-extras: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,onnx,openvino]' $(TORCH_INDEX_ARG) || echo "openvino extra not installed: its tests skip"
	$(PY) -m pip install -q -e '.[dev,onnx,postgres,slurm]' $(TORCH_INDEX_ARG) && touch $@ || echo "postgres/slurm extras not installed: their tests skip"

test-all: test $(VENV)/.installed-extras ## the whole suite: `make test`, then the slow tier (with the postgres, slurm, openvino extras)
	$(PY) -m pytest -q -m slow $(ARGS)

test-slow: test-all ## the old name of test-all

lint: $(VENV)/.installed ## ruff and mypy
	$(PY) -m ruff check anomaly_lab hydra_plugins scripts tests
	$(PY) -m ruff format --check anomaly_lab hydra_plugins scripts tests
	$(PY) -m mypy

# The thesis's Optuna search (24 TPE trials over the 4 x 3 x 2 lr x grid x mask-ratio space) at CPU size on
# synthetic bottles: 5 min on 2 cores. Resumable: run it again to finish a killed
# sweep. SEARCH=bottles_wide for the continuous space; WORKERS=n parallel processes on one study; SWEEP_ARGS
# replaces the data/model/size choice (e.g. "dataset=mvtec model=unet512 trainer=gpu").
SEARCH ?= bottles_thesis
WORKERS ?= 1
SWEEP_ARGS ?= dataset=synthetic_bottles model=unet_small model.image_size=64 trainer.max_epochs=8 trainer.check_val_every_n_epoch=4
sweep: $(VENV)/.installed ## resumable Optuna sweep (SEARCH=bottles_thesis, WORKERS=1, SWEEP_ARGS=...), study in outputs/sweeps/optuna.db
	@pids=""; for i in $$(seq $(WORKERS)); do \
		$(PY) -m anomaly_lab.train --multirun hparams_search=$(SEARCH) $(SWEEP_ARGS) $(ARGS) & pids="$$pids $$!"; \
		[ $$i -lt $(WORKERS) ] && sleep 5; \
	done; status=0; for pid in $$pids; do wait $$pid || status=1; done; exit $$status

# A recipe for a new category from its folder alone (anomaly_lab/tune.py): reads the layout, searches
# (hparams_search=auto_cpu) inside MINUTES of wall clock, writes recipes/experiment/$(NAME).yaml and its trials table,
# trains and tests it once. DEFECTS: a folder of defects (validation takes a share); NAME: the recipe's name.
# TILED=true: pages cut into 64 px tiles (hparams_search=auto_tiles_cpu; DEFECTS marked pages, MASKS their masks).
tune: $(VENV)/.installed ## budgeted recipe search, then train+test it (DATA=folder MINUTES=60 [DEFECTS=...] [NAME=...] [TILED=true MASKS=...])
	$(if $(filter command line environment,$(origin DATA)),,$(error DATA=<folder of good images or an MVTec root> is required))$(if $(MINUTES),,$(error MINUTES=<search budget> is required))
	$(PY) -m anomaly_lab.tune 'data=$(DATA)' minutes=$(MINUTES) $(if $(DEFECTS),'defects=$(DEFECTS)') $(if $(MASKS),'masks=$(MASKS)') $(if $(TILED),tiled=$(TILED)) $(if $(NAME),name=$(NAME)) $(ARGS)

sweep-report: $(VENV)/.installed ## a stored study's trials table, best params and test metrics, plots (STUDY=name)
	$(PY) -m anomaly_lab.tools.sweep_report $(if $(STUDY),study=$(STUDY)) $(ARGS)

# MVTec AD bottle: data/mvtec_bottle when present, else this workplace's shared copy; DATA=... to choose.
DATA ?= $(if $(wildcard data/mvtec_bottle),data/mvtec_bottle,../shared/data/mvtec_bottle)
benchmark: $(VENV)/.installed ## train+test the CPU-sized bottle experiments on MVTec (DATA=...), write docs/benchmarks.md
	$(PY) -m anomaly_lab.tools.benchmark data_root=$(DATA) report=docs/benchmarks.md \
		'command="make benchmark DATA=$(DATA)$(if $(ARGS), $(ARGS))"' $(ARGS)

bench-loader: $(VENV)/.installed ## data loader vs unet64 training throughput on synthetic notes tiles (want >= 5x)
	$(PY) scripts/benchmark_loader.py dataset=synthetic_notes model=unet64 hydra.run.dir=outputs/bench_loader $(ARGS)

overhead: $(VENV)/.installed ## plain PyTorch loop vs Lightning img/s on the same steps (unet64 notes tiles; want ratio >= 0.95)
	$(PY) scripts/overhead.py dataset=synthetic_notes model=unet64 $(ARGS)

tb: $(VENV)/.installed ## TensorBoard on outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
