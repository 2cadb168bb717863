# Quick start: `make run` sets up .venv and starts the app; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 7860

.PHONY: run serve test lint system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.requirements: requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.requirements-test: requirements-test.txt $(VENV)/.requirements
	$(PY) -m pip install -r requirements-test.txt
	touch $@

$(VENV)/.requirements-serve: requirements-serve.txt $(VENV)/.requirements
	$(PY) -m pip install -r requirements-serve.txt
	touch $@

# Debian's chromium for the browser test (as root: apt-get; otherwise say what to install).
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "The browser test needs Debian's chromium: sudo apt-get install chromium"; \
		fi; \
	fi

run: $(VENV)/.requirements
	$(PY) app.py --port $(PORT)

# The engine as Ray Serve replicas, one per GPU (SERVE_REPLICAS=N on a machine without GPUs).
serve: $(VENV)/.requirements-serve
	SERVE=ray $(PY) app.py --port $(PORT)

lint: $(VENV)/.requirements-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: system-deps $(VENV)/.requirements-test $(VENV)/.requirements-serve lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
