# Two entry points that work from a clean clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test openapi bench clean

# torch first and pinned: the CPU build lies in the local wheel cache on dev/CI machines,
# and a later unpinned requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ./client
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/visionjobs run

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
