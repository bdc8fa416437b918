# The README's commands. Each bootstraps .venv on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0

.PHONY: demo test test-fast lint docs format bench studies lock clean

# torch first, pinned to the CPU wheel; the constraint keeps every later step from
# swapping it for a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf outputs/demo
	$(BIN)/python -m fedpriv.experiments.run +experiment=demo hydra.run.dir=outputs/demo/federated
	$(BIN)/python benchmarks/centralized.py --out outputs/demo/centralized.json
	$(BIN)/fedpriv report outputs/demo --out outputs/demo --reference centralized=outputs/demo/centralized.json

# The fleet tests start `fedpriv superlink`'s Fleet proxy: Debian's nginx; the telemetry
# test scrapes a run with Debian's Prometheus (both installed here where apt-get can, as on CI).
test: $(STAMP) lint docs test-fast
	@command -v nginx >/dev/null || { command -v apt-get >/dev/null && \
	  apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; } || \
	  echo "nginx is not installed: the fleet tests need it (Debian: apt-get install nginx-light)"
	@command -v prometheus >/dev/null || { command -v apt-get >/dev/null && apt-get update -q >/dev/null && \
	  apt-get install -y -q --no-install-recommends prometheus >/dev/null; } || \
	  echo "prometheus is not installed: the scrape test needs it (Debian: apt-get install prometheus)"
	$(BIN)/python -m pytest -m "$(SLOW)"

# Unit tests and whole runs on the in-process engine: no Ray, no fleets, no child
# processes. They share nothing, so they run in parallel, one torch thread per worker
# (tiny models: more threads per worker only contend for the cores).
SLOW := simulation or deployment or processes
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not ($(SLOW))" -n auto --maxprocesses 4

lint: $(STAMP)
	PATH=$(BIN):$$PATH .ci/lint

# The documentation site, built strictly (a broken link or reference fails) into build/site.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 PYTHONWARNINGS=ignore $(BIN)/mkdocs build --strict --quiet --site-dir build/site

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	-command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "Fashion-MNIST not installed; benchmarks use digits")
	mkdir -p outputs/bench
	$(BIN)/python benchmarks/simulation.py --out outputs/bench/simulation.json
	$(BIN)/python benchmarks/dp_overhead.py --out outputs/bench/dp_overhead.json
	$(BIN)/python benchmarks/dp_utility.py --out outputs/bench
	$(BIN)/python benchmarks/he_aggregation.py --out outputs/bench/he_aggregation.json
	$(BIN)/python benchmarks/vertical.py --out outputs/bench/vertical.json
	$(BIN)/python benchmarks/swarm.py --out outputs/bench/swarm.json
	$(BIN)/python benchmarks/selection.py --out outputs/bench/selection.json
	$(BIN)/python benchmarks/deployment.py --out outputs/bench/deployment.json
	$(BIN)/python benchmarks/audit.py --out outputs/bench/audit.json
	$(BIN)/python benchmarks/async.py --out outputs/bench/async.json --plot outputs/bench/async.png

# Every study preset in full (conf/experiment/), each a multirun with its report; hours
# on a laptop. Not in CI (tests run each preset in a reduced form).
studies: $(STAMP)
	-command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "Fashion-MNIST not installed: the unification study needs it")
	$(BIN)/python -m fedpriv.experiments.studies --out outputs/studies

# deploy/requirements.lock: every runtime dependency but torch, pinned with SHA-256 hashes
# for x86_64 and aarch64 (uv's universal resolution); the fleet images install from it.
lock: $(STAMP)
	deploy/lock.sh $(BIN)/uv

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache .hypothesis
