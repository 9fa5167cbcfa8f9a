# lega: make demo | make test | make test-classic | make compose-test | make stop | make clean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-classic compose-test lint bench stop services venv clean

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
# real services (on quorum queues, SPEC 12), then the queues' own tests and the pipeline
# once more on classic queues (broker.queue_type classic)
test: venv services lint
	@$(BIN)/python -m pytest -q tests
	@LEGA_TEST_QUEUE_TYPE=classic $(BIN)/python -m pytest -q $(CLASSIC_TESTS)

CLASSIC_TESTS := tests/test_queues.py tests/test_pipeline.py \
	tests/test_resilience.py::test_parked_message_is_listed_and_sent_back

# the whole suite on classic queues
test-classic: venv services lint
	@LEGA_TEST_QUEUE_TYPE=classic $(BIN)/python -m pytest -q -m "not compose and not cluster" tests

# deploy/docker-compose.yml run for real: installs docker.io, debootstrap and compose v2
# if missing, starts dockerd if none answers (and stops it after), builds the images
# (cached) and ingests files through the stack (scripts/compose_test.py; the suite runs
# it too, tests/test_compose.py)
compose-test:
	@$(PYTHON) scripts/compose_test.py

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
