# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 49983
BROWSER := tests/browser

.PHONY: run test lint generate system browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Starts the daemon in the foreground on port 49983 (outside a Firecracker VM).
run: $(STAMP)
	$(BIN)/envd -port $(PORT) -isnotfc -verbose

# Lint, then the whole suite against real daemons on free ports (and a headless chromium).
test: $(STAMP) system browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerates envd/gen from proto/ (tests/test_generated.py fails when it is stale).
generate: $(STAMP)
	$(BIN)/python scripts/generate.py

# What the tests need from the machine: the `user` account the SDKs assume, bash, python3,
# chromium and Node.js for the browser test.
system:
	scripts/setup-system.sh

# The browser test's npm packages (pinned by package-lock.json) and the page bundle.
browser: $(BROWSER)/dist/page.bundle.js

$(BROWSER)/node_modules/.installed: $(BROWSER)/package.json $(BROWSER)/package-lock.json
	cd $(BROWSER) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(BROWSER)/dist/page.bundle.js: $(BROWSER)/node_modules/.installed $(BROWSER)/page.js $(BROWSER)/build.mjs
	cd $(BROWSER) && npm run --silent build

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache $(BROWSER)/node_modules $(BROWSER)/dist
