# Two entry points that work from a clean clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# One lock for development, CI and both images (requirements/lock.py says how it is made).
LOCK := requirements/lock.txt
TORCH := $(shell sed -n 's/^torch==//p' $(LOCK))

# `make run HOST=0.0.0.0 PORT=9000`: where the embedded service listens.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test openapi bench lock clean

# torch first, at the locked version: the CPU build lies in the local wheel cache on dev/CI
# machines, and a later requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml client/pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) torch==$(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ./client
	$(BIN)/pip install -q -c $(LOCK) -e '.[ml,test]'
	touch $(STAMP)

# After changing a dependency: install it (make .venv/.installed), then pin it here.
lock: $(STAMP)
	$(BIN)/python requirements/lock.py

run: $(STAMP)
	$(BIN)/visionjobs run --host $(HOST) --port $(PORT)

# Headless Chromium for tests/console: Debian's package, driven by Playwright.
CHROMIUM_INSTALL = apt-get update -q && apt-get install -y -q chromium

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then $(CHROMIUM_INSTALL); else sudo sh -c '$(CHROMIUM_INSTALL)'; fi; }
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

openapi: $(STAMP)
	$(BIN)/visionjobs openapi --out openapi/openapi.json

clean:
	rm -rf $(VENV) data
