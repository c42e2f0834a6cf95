# lamflow — the two commands:  `make quickstart` (set up + run the main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/quickstart
# pytest-xdist workers: one per CI core (each step process uses its own threads on top);
# loadgroup keeps the tests of one test Slurm cluster (xdist_group "slurm") on one worker.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --maxschedchunk 1 --durations=20

.PHONY: setup quickstart test test-fast prefect-up clean

# One install for everything (engines, tests); pins and their reasons are in constraints.txt.
$(BIN)/.lamflow-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --quiet -c constraints.txt -e '.[prefect,dflow,s3,lam,hpc,test]'
	$(BIN)/pip check
	touch $@

setup: $(BIN)/.lamflow-installed

quickstart: setup
	$(BIN)/lamflow distill examples/cu-emt/config.yaml --workdir $(RUN)

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

# A local Prefect server (UI on http://127.0.0.1:4200) with lamflow's deployments and a worker.
prefect-up: setup
	$(BIN)/lamflow prefect up

clean:
	rm -rf runs .pytest_cache
