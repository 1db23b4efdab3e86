# The two commands: `make up` and `make test`. Everything installs into .venv from the pinned
# sets in environments/ (see environments/README.md).

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TP := $(VENV)/bin/tp
INSTALLED_TRAIN := $(VENV)/.installed-train
INSTALLED_DEV := $(VENV)/.installed-dev

.PHONY: up down status install install-dev test lint format clean

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

install: $(INSTALLED_TRAIN)

install-dev: $(INSTALLED_DEV)

## up: install, then start the whole platform and print its URL
up: install
	@$(TP) up

## down: stop every service `make up` started (trainings keep running; `tp down --jobs`)
down:
	@if [ -x $(TP) ]; then $(TP) down; else echo "nothing to stop (no $(VENV))"; fi

status: install
	@$(TP) status

## test: install the test dependencies and run the whole suite
test: install-dev
	@scripts/ensure_test_packages.sh
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
