# Every target sets itself up: a fresh clone needs nothing but python3 (3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the operator page tests drive Debian's chromium with playwright (no browser download)
CHROMIUM := /usr/bin/chromium
BROWSER  := $(VENV)/.browser
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: install browser demo test unit integration e2e bench schema clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

browser: $(BROWSER)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

$(BROWSER): $(STAMP) $(CHROMIUM)
	$(BIN)/python -c "import playwright.async_api" || $(BIN)/python -m pip install --quiet "playwright>=1.45"
	touch $(BROWSER)

demo: install
	$(BIN)/goalrail demo

test: install browser
	$(BIN)/python -m pytest -q tests

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install
	$(BIN)/python -m pytest -q tests/integration

e2e: install browser
	$(BIN)/python -m pytest -q tests/e2e

bench: install
	$(BIN)/goalrail bench

schema: install
	$(BIN)/goalrail schema export --out docs/schema

clean:
	rm -rf $(VENV) .goalrail .pytest_cache
