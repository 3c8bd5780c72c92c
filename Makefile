# Scaling-study orchestrator. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SWEEP ?= default
POINT ?=
ARGS ?=
PORT ?= 5000
TRIALS ?= 20
JOBS ?= 1
BUDGET ?= 1x
PACK ?=
STORE ?=
LAUNCH := $(if $(PACK),hydra/launcher=packed hydra.launcher.pack=$(PACK),$(if $(filter auto,$(JOBS)),hydra/launcher=packed,$(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS))))
STORE_DIR := $(or $(STUDY_HOME),$(CURDIR))

.DEFAULT_GOAL := help
.PHONY: help setup sweep decide point tune ui server user-add user-grant user-remove analyze recommend measure prepare-data test test-quick bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv with the project installed (skipped when pyproject.toml is unchanged)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

sweep: setup ## run the grid of sweeps/SWEEP.yaml (SWEEP=default, JOBS=4 in parallel, JOBS=auto packed, PACK=N per GPU); finished points are skipped; ARGS="..." adds overrides
	$(PY) -m study.run --multirun --config-dir sweeps --config-name $(SWEEP) $(LAUNCH) $(ARGS)

decide: setup ## adaptive study of SWEEP: train only the points that settle depth vs width (BUDGET=1x grid, 3e13 FLOPs or 20m; JOBS=4, JOBS=auto packed)
	$(PY) -m study.decide --sweep $(SWEEP) --budget $(BUDGET) --jobs $(if $(PACK),auto,$(JOBS)) $(if $(PACK),--pack $(PACK)) $(ARGS)

point: setup ## (re)run one grid point of SWEEP: make point POINT="model.width=0.5 model.depth=50 data.resolution=16 recipe.epochs=4"
	$(PY) -m study.run --config-dir sweeps --config-name $(SWEEP) force=true $(POINT)

tune: setup ## tune one point on its minival split (Optuna, TRIALS=20), then train it with the best settings
	$(PY) -m study.run --config-dir sweeps --config-name $(SWEEP) force=true tune.trials=$(TRIALS) $(POINT)

ui: setup ## browse results: MLflow UI on http://127.0.0.1:5000 (PORT=...) over the default store; prints each sweep's link
	$(PY) -m study.record.ui --store sqlite:///$(STORE_DIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

server: setup ## shared tracking server with users: MLflow on 127.0.0.1:5001 (ARGS="--host 0.0.0.0") over PostgreSQL on 127.0.0.1:5433; sweeps use tracking=server
	$(PY) -m study.server --home $(STORE_DIR) $(ARGS)

user-add: setup ## a user of make server: make user-add NAME=alice (random password in $(STORE_DIR)/users/alice.env, mode 600)
	$(PY) -m study.server user --home $(STORE_DIR) add $(NAME)

user-grant: setup ## a user's permission on a sweep: make user-grant NAME=bob SWEEP=default PERMISSION=EDIT (READ, EDIT, MANAGE or NONE)
	$(PY) -m study.server user --home $(STORE_DIR) grant $(NAME) $(SWEEP) $(PERMISSION)

user-remove: setup ## remove a user of make server: make user-remove NAME=alice
	$(PY) -m study.server user --home $(STORE_DIR) remove $(NAME)

analyze: setup ## fit and compare scaling rules of SWEEP: report in reports/SWEEP/ and on the sweep parent run (STORE=http://HOST:5001: a server's); ARGS="--measured-on MACHINE" reads that machine's latency
	$(PY) -m analysis --sweep $(SWEEP) $(if $(STORE),--tracking-uri $(STORE)) $(ARGS)

recommend: setup ## best depth/width/resolution in a budget: make recommend EPOCHS=4 LATENCY_MS=10 (or FLOPS=5e6) [MEASURED_ON=machine] [STORE=uri]
	$(PY) -m analysis recommend --sweep $(SWEEP) $(if $(STORE),--tracking-uri $(STORE)) --epochs $(EPOCHS) $(if $(FLOPS),--flops $(FLOPS),--latency-ms $(LATENCY_MS)) $(if $(MEASURED_ON),--measured-on $(MEASURED_ON))

measure: setup ## measure a finished sweep's points alone (training step at batch <= 128): make measure SWEEP=default [DEVICE=cuda] [FORCE=1: again, on this machine]
	$(PY) -m study.measure.alone --sweep $(SWEEP) --store $(or $(STORE),sqlite:///$(STORE_DIR)/mlflow.db) --device $(or $(DEVICE),auto) $(if $(FORCE),--force)

prepare-data: setup ## resized copy of an image folder: make prepare-data SRC=/data/imagenet DST=/data/imagenet_small SWEEP=resnet_rs_paper (or SIDE=296)
	$(PY) -m study.sweep.prepare --source $(SRC) --dest $(DST) $(if $(SIDE),--side $(SIDE),--sweep $(SWEEP)) $(ARGS)

# The SLURM drills mostly wait on the scheduler, the tracking server and SLURM's node time-out: they
# run beside the rest, in a pytest of their own (its output after the rest's); the suite fails if either
# does. ARGS naming test files (ARGS=tests/test_x.py) runs just those.
CLUSTER_TESTS = tests/test_slurm.py tests/test_slurm_nodes.py
# pytest without this make's variables (make exports ARGS=... and MAKEFLAGS to its commands, and
# a `make` a test runs would take them: make analyze would get ARGS=--durations=30)
PYTEST = env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u ARGS $(PY) -m pytest
test: setup ## run the whole test suite (what CI runs; the SLURM drills beside the rest)
ifneq ($(findstring tests/,$(ARGS)),)
	$(PYTEST) -q $(ARGS)
else
	@log=$$(mktemp); base=$$(mktemp -d); \
	$(PYTEST) -q -p no:cacheprovider --basetemp=$$base/tmp $(ARGS) $(CLUSTER_TESTS) > $$log 2>&1 & drills=$$!; \
	$(PYTEST) -q $(addprefix --ignore=,$(CLUSTER_TESTS)) $(ARGS); rest=$$?; \
	wait $$drills; status=$$?; echo "==== $(CLUSTER_TESTS), run beside the rest ===="; cat $$log; \
	rm -rf $$log $$base; for code in $$rest $$status; do [ $$code -eq 0 ] || [ $$code -eq 5 ] || exit 1; done  # 5: none selected
endif

test-quick: setup ## the tests but the long end-to-end ones marked slow (a few minutes)
	$(PYTEST) -q -m "not slow" $(ARGS)

bench: setup ## benchmarks: trainer vs bare loop, input pipeline vs step, fixed and skip cost per point
	$(PY) -m benchmarks $(ARGS)

clean: ## remove outputs of runs (keeps the MLflow store)
	rm -rf outputs
