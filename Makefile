# Two entry points for a fresh machine: `make repro` (pipeline on the demo data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench study clean

PRESET ?= quick
SHARD ?= 1/1

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

repro: setup
	dvc repro

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_segment.py
	PYTHONPATH=tests $(PY) benchmarks/bench_download.py

# The study of study.yaml through DVC's experiment queue, then its report (reports/study.md).
study: setup
	$(PY) -m fashionbg.study run --preset $(PRESET) --shard $(SHARD)
	$(PY) -m fashionbg.study report --preset $(PRESET)
