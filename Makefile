# The README's commands. Each bootstraps .venv on a fresh machine with only Python
# (3.11, 3.12 or 3.13; `make test PYTHON=python3.13 VENV=.venv-3.13` for another).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0

# Debian's Fashion-MNIST, installed when missing where apt-get is; $(1) says what its
# absence means.
fashion_mnist = @if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	    echo "Fashion-MNIST not installed: $(1)"; \
	fi

.PHONY: demo test test-fast test-pythons lint docs format bench studies lock fleet-arm64 clean

# torch first, from PyTorch's own index: the CPU build by default on any Linux machine
# (PyPI's x86_64 torch is a CUDA build of several GB), `TORCH=cu126 make demo` for a CUDA
# one, as pytorch.org documents. Where that index cannot be reached, pip's own sources
# are used (a local CPU wheel if pip is configured with one). The constraint keeps every
# later step from swapping torch for another build.
TORCH ?= cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/$(TORCH)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_INDEX)/torch/', timeout=15)" 2>/dev/null; then \
	  echo "torch from $(TORCH_INDEX)"; \
	  $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt --index-url $(TORCH_INDEX) torch; \
	else \
	  echo "$(TORCH_INDEX) cannot be reached: torch from pip's configured sources"; \
	  $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt torch; \
	fi
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf outputs/demo
	$(BIN)/python -m fedpriv.experiments.run +experiment=demo hydra.run.dir=outputs/demo/federated
	$(BIN)/python benchmarks/centralized.py --out outputs/demo/centralized.json
	$(BIN)/fedpriv report outputs/demo --out outputs/demo --reference centralized=outputs/demo/centralized.json

# The slower tests drive real Debian programs: nginx (the fleet's Fleet proxy), Chromium
# (the docs site from disk), Prometheus (scraping a run), and iproute2 and iptables (the
# fleet across an emulated network; iptables stands in where the kernel has no netem).
# Installed here where apt-get can, as on CI; elsewhere the tests that need one skip
# and say so.
TEST_PROGRAMS := nginx:nginx-light chromium:chromium prometheus:prometheus ip:iproute2 iptables:iptables
test: $(STAMP) lint docs test-fast
	@missing=$$(for p in $(TEST_PROGRAMS); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done); \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; \
	  else echo "not installed: $$missing (Debian: apt-get install $$missing); the tests that need them skip"; fi; \
	fi
	$(BIN)/python -m pytest -m "$(SLOW)"

# Unit tests and whole runs on the in-process engine: no Ray, no fleets, no child
# processes. They share nothing, so they run in parallel, one torch thread per worker
# (tiny models: more threads per worker only contend for the cores).
SLOW := simulation or deployment or processes or slow
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not ($(SLOW))" -n auto --maxprocesses 4

# The fast lane under other supported Pythons, each in its own .venv-<version>; CI runs
# 3.11 (where PyTorch's index is out of reach, each other Python costs a 3 GB CUDA torch).
PYTHONS ?= python3.12 python3.13
test-pythons:
	@for py in $(PYTHONS); do \
	  version=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])') || exit 1; \
	  $(MAKE) --no-print-directory test-fast PYTHON=$$py VENV=.venv-$$version || exit 1; \
	done

lint: $(STAMP)
	PATH=$(BIN):$$PATH .ci/lint

# The documentation site, built strictly (a broken link or reference fails) into build/site.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 PYTHONWARNINGS=ignore $(BIN)/mkdocs build --strict --quiet --site-dir build/site

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(call fashion_mnist,benchmarks use digits)
	mkdir -p outputs/bench
	$(BIN)/python benchmarks/simulation.py --out outputs/bench/simulation.json
	$(BIN)/python benchmarks/population.py --out outputs/bench/population.json
	$(BIN)/python benchmarks/dp_overhead.py --out outputs/bench/dp_overhead.json
	$(BIN)/python benchmarks/device_training.py --out outputs/bench/device_training.json
	$(BIN)/python benchmarks/dp_utility.py --out outputs/bench
	$(BIN)/python benchmarks/he_aggregation.py --out outputs/bench/he_aggregation.json
	$(BIN)/python benchmarks/fedbuff_ckks.py --out outputs/bench/fedbuff_ckks.json
	$(BIN)/python benchmarks/vertical.py --out outputs/bench/vertical.json
	$(BIN)/python benchmarks/swarm.py --out outputs/bench/swarm.json
	$(BIN)/python benchmarks/selection.py --out outputs/bench/selection.json
	$(BIN)/python benchmarks/deployment.py --out outputs/bench/deployment.json
	$(BIN)/python benchmarks/audit.py --out outputs/bench/audit.json
	$(BIN)/python benchmarks/async.py --out outputs/bench/async.json --plot outputs/bench/async.png
	$(BIN)/python benchmarks/defaults.py --out outputs/bench/defaults.json --doc outputs/bench/defaults.md

# Every study preset in full (conf/experiment/), each a multirun with its report and its
# page in docs/studies/; about 10 minutes on 2 cores (the unification study's 100
# Fashion-MNIST runs take 4). Not in CI (tests run each preset in a reduced form).
studies: $(STAMP)
	$(call fashion_mnist,the unification study needs it)
	$(BIN)/python -m fedpriv.experiments.studies --out outputs/studies --docs docs/studies

# deploy/requirements.lock: every runtime dependency but torch, pinned with SHA-256 hashes
# for x86_64 and aarch64 (uv's universal resolution); the fleet images install from it.
lock: $(STAMP)
	deploy/lock.sh $(BIN)/uv

# An emulated Raspberry Pi: Debian bookworm arm64 (Raspberry Pi OS's base) built with
# debootstrap into build/arm64, fedpriv installed as deploy/ says, booted under
# qemu-system-aarch64; it joins a SuperLink on this host as a SuperNode (TLS, node key)
# and trains DP-SGD + CKKS (deploy/arm64/fleet.sh; docs/deployment.md has what it took).
# Needs root. Not in CI: about an hour from nothing on a 2-core x86_64 host (emulated).
ARM64_PROGRAMS := debootstrap:debootstrap qemu-system-aarch64:qemu-system-arm qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support
fleet-arm64: $(STAMP)
	@missing=$$(for p in $(ARM64_PROGRAMS); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done); \
	if [ -n "$$missing" ]; then apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; fi
	deploy/arm64/fleet.sh build/arm64

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache .hypothesis
