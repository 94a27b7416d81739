# lsdflow: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed on its own first: a bare or open-ended torch requirement on a
# machine without torch pulls the newest CUDA build (gigabytes).
TORCH  := torch==2.13.0

.PHONY: install demo test test-fast test-burst benchmarks peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lsdflow demo

test: install
	$(BIN)/python -m pytest -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# 100 acquisitions dropped at once on the served platform, each processed end to end (~40 min)
test-burst: install
	LSDFLOW_TEST_BURST=100 $(BIN)/python -m pytest -q tests/reliability/test_burst_end_to_end.py

# every benchmark, one dated report in benchmarks/results/runs/ (JSON, markdown table, plot);
# `make benchmarks BENCH_ARGS=--tiny` checks that they all run (minutes)
benchmarks: install
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# lsdflow against volara on the same real affinities; volara 1.0.5 needs daisy 1.x, so it
# gets a virtual environment of its own (made once); `make peers PEER_ARGS="--crop 48"` is quick
PEER_VENV := benchmarks/peers/.venv-volara

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet volara==1.0.5
	touch $@

peers: install $(PEER_VENV)/.installed
	$(BIN)/python benchmarks/peers/volara_compare.py --volara-python $(PEER_VENV)/bin/python $(PEER_ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENV) workspace .pytest_cache
