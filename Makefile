# lega: make demo | make test | make stop | make clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench stop services venv clean

# the virtual environment with lega and its pinned dependencies (and pytest)
$(BIN)/ega-ingest: setup.py requirements.txt requirements-dev.txt
	@scripts/venv.sh $(PYTHON) $(VENV)
	@touch $@

venv: $(BIN)/ega-ingest

services:
	@scripts/services.sh

# brings up the local stack on the embedded defaults and ingests a sample file
demo: venv services
	@scripts/demo.sh

# everything the tests need, then the static checks and the whole suite against the
# real services
test: venv services lint
	@$(BIN)/python -m pytest -q tests

# the benchmark (real workers and services, with baselines); smaller and quicker with
# e.g. make bench BENCH_ARGS="--size-mib 64 --big-mib 128 --small-count 100"
bench: venv services
	@cd bench && ../$(BIN)/python run.py $(BENCH_ARGS)

lint: venv
	@$(BIN)/ruff check lega tests setup.py

# stops the demo's workers (and the services the demo started)
stop:
	@scripts/stop.sh

clean: stop
	rm -rf data $(VENV) *.egg-info
