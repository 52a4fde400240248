# Two entry points for a fresh machine: `make repro` (pipeline on the demo data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
# DVC's site cache inside the project, not one folder per repository in /var/tmp/dvc.
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.dvc/tmp/site

.PHONY: setup charts repro test test-quick test-gpu lint browser bench bench-gpu gpu-check study preflight metrics-report panels clean

PRESET ?= quick
SHARD ?= 1/1
# Where the paper's datasets are (an archive, a folder or an http(s) URL), said once for every
# cell; SMOKE=1 runs the preset's smoke settings (every arm, variant and claim, tiny);
# SEQUENTIAL=1 runs the seeds in waves and stops each arm once its claims are decided.
FASHIONSTYLE14 ?=
FASHIONPEDIA ?=
FASHIONSTYLE14_SHA256 ?=
FASHIONPEDIA_SHA256 ?=
SMOKE ?=
SEQUENTIAL ?=
# Where the cells run: queue (DVC's queue, one at a time), ray (every device of this machine, or
# of the cluster at RAY_ADDRESS) or auto (ray where there is more than one GPU, or more than one
# core and no GPU; else queue); across machines, the remotes workers clone from and push to.
ENGINE ?= auto
GIT_REMOTE ?=
DVC_REMOTE ?=
CPUS_PER_CELL ?= 1
BASE ?= HEAD
# The values above reach recipes as environment variables, read as "$$NAME" (the shell pastes
# them in whole, parsing none: a quote, a space or a newline in a path is data, not syntax).
# Each is made a plain string first, since make expands what it exports: a `$(shell …)` in a
# value stays text.
PASSED := PRESET SHARD SMOKE SEQUENTIAL FASHIONSTYLE14 FASHIONPEDIA FASHIONSTYLE14_SHA256 \
	FASHIONPEDIA_SHA256 ENGINE GIT_REMOTE DVC_REMOTE CPUS_PER_CELL BASE EXPECT_GPUS
$(foreach name,$(PASSED),$(eval override $(name) := $$(value $(name))))
export $(PASSED)
STUDY_ARGS = --preset="$$PRESET" $(if $(SMOKE),--smoke) $(if $(SEQUENTIAL),--sequential) \
	--data="fashionstyle14=$$FASHIONSTYLE14" --data="fashionpedia=$$FASHIONPEDIA" \
	--sha256="fashionstyle14=$$FASHIONSTYLE14_SHA256" --sha256="fashionpedia=$$FASHIONPEDIA_SHA256"
# Headless Chromium for the test that the offline plots page draws its charts.
CHROMIUM_NAMES := chromium chromium-browser google-chrome
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(VENV)/.installed charts

$(VENV)/.installed: requirements.txt requirements-gpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(if $(GPU_VENV),$(PY) -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu && \
		$(PY) -m pip install --quiet -r requirements-gpu.txt)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# A GPU machine: the same venv with ONNX Runtime's CUDA build (requirements-gpu.txt) in place of
# the CPU one, for good: the mark $(VENV)/.gpu makes every later setup swap it in again.
.PHONY: setup-gpu
GPU_VENV = $(wildcard $(VENV)/.gpu)
setup-gpu:
	python3 -m venv $(VENV)
	touch $(VENV)/.gpu
	rm -f $(VENV)/.installed
	$(MAKE) --no-print-directory setup

# vega, vega-lite and vega-embed for the offline HTML of `dvc plots` (.dvc/plots_offline.html):
# the only part that needs Node.js, so without npm the pipeline and its tests still run.
charts:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory node_modules/.package-lock.json; \
	else echo "note: no npm here, so dvc plots' offline page will not draw; install Node.js and run 'make charts'"; fi

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

browser:
	@for name in $(CHROMIUM_NAMES); do command -v $$name >/dev/null && exit 0; done; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# DVC exits 0 when a folder output could not be copied into its cache (a full disk): checked.
repro: setup
	dvc repro
	$(PY) -m fashionbg.study.run.cache_check

# Two pytest-xdist workers: one process left a third of 2 cores idle (the end-to-end tests wait
# on their subprocesses); tests/conftest.py's groups keep each long module on one worker. The
# 25 slowest tests close every run's output, so where CI's time goes is in its log.
test: setup browser
	$(PY) -m pytest -n 2 --dist loadgroup --durations=25

# The inner loop: every test that runs no stage, DVC, torchrun, Ray or U²-Net in a subprocess
# (tests/conftest.py marks those slow), on two workers.
test-quick: $(VENV)/.installed
	$(PY) -m pytest -n 2 -m "not slow"

# On a GPU machine: the tests that need CUDA (pytest.ini's gpu marker; skipped without it).
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu

# ruff's linter, then mypy, over the package and the stages (pyproject.toml configures both).
lint: $(VENV)/.installed
	$(PY) -m ruff check fashionbg stages
	$(PY) -m mypy

bench: setup
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_segment.py
	PYTHONPATH=tests $(PY) benchmarks/bench_download.py
	$(PY) benchmarks/bench_variants.py

# On a GPU machine: background removal per ONNX Runtime provider and both training stages in
# one process and DDP over every visible GPU, in one table (also runs, slowly, on the CPU).
bench-gpu: setup
	$(PY) benchmarks/bench_gpu.py

# GPU acceptance: the devices (NVIDIA GPUs the driver lists that torch or ONNX Runtime cannot
# use fail it; EXPECT_GPUS=N fails it with fewer), the real stages as subprocesses with what each
# row's path must show (ONNX sessions' providers, precision, NCCL), seeded logits on CUDA against
# the CPU, throughput ratios from the same run; one row printed as each finishes, exit 1 on a
# failure. Without CUDA or NVIDIA devices it says so in one line and exits 0.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(if $(EXPECT_GPUS),--expect-gpus="$$EXPECT_GPUS")

# The study of study.yaml on ENGINE (after the pre-flight), then its
# report (reports/study.md, or the preset's own).
study: $(VENV)/.installed
	$(PY) -m fashionbg.study run $(STUDY_ARGS) --shard="$$SHARD" --engine="$$ENGINE" \
		--git-remote="$$GIT_REMOTE" --dvc-remote="$$DVC_REMOTE" --cpus-per-cell="$$CPUS_PER_CELL"
	$(PY) -m fashionbg.study report $(STUDY_ARGS)

# The study's pre-flight alone: data, weights, disk, memory, devices, a time per cell.
preflight: $(VENV)/.installed
	$(PY) -m fashionbg.study preflight $(STUDY_ARGS) --engine="$$ENGINE" \
		--cpus-per-cell="$$CPUS_PER_CELL"

# Markdown for a pull request (CI writes it to the job summary): the headline metrics of the
# `original` experiment against BASE, then `original` against `rembg` (the README's commands
# make both experiments).
metrics-report:
	@echo "### Headline metrics: $$BASE → this change (original images)"; echo
	@dvc metrics diff --md --all "$$BASE" original
	@echo; echo "### Original → background removed (rembg)"; echo
	@dvc metrics diff --md --all original rembg

# One original-against-rembg figure per task for a paper (reports/panels/), from the same two
# experiments.
panels:
	$(PY) -m fashionbg.study.read.panel original rembg
