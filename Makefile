# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGING_STAMP := $(VENV)/.installed-packaging
PORT ?= 49983
BROWSER := tests/browser

.PHONY: run test test-rootfs bundle overlay image podman rootfs-tools lint generate system browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# An editable install compiles nothing; with PYTHONDONTWRITEBYTECODE set, every
	# start would compile all of envd again (~80 ms of ~400 on a 2-core VM).
	$(BIN)/python -m compileall -q envd
	touch $@

# Starts the daemon in the foreground on port 49983 (outside a Firecracker VM).
run: $(STAMP)
	$(BIN)/envd -port $(PORT) -isnotfc -verbose

# Linters for the packaging files (hadolint, kubernetes-validate), kept out of `make run`.
$(PACKAGING_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,packaging]'
	touch $@

# Lint (ruff; mypy --strict over envd, tests, bench and scripts, configured in
# pyproject.toml), then the whole suite against real daemons on free ports and a headless
# chromium (the frozen bundle's tests are `make test-rootfs`).
test: $(STAMP) $(PACKAGING_STAMP) system browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -m "not rootfs" $(PYTEST_ARGS)

# debootstrap, systemd-nspawn, unshare, readelf (root: installs what is missing).
rootfs-tools:
	scripts/setup-rootfs-tools.sh

# The self-contained daemon under dist/ (frozen in a cached Debian 11 chroot).
bundle: rootfs-tools
	scripts/build-bundle.sh

# The tarballs a template build extracts at / (dist/envd-overlay*.tar.gz).
overlay: bundle
	scripts/build-overlay.sh

# podman with runc (root: installs what is missing).
podman:
	scripts/setup-podman.sh

# The debug image (packaging/docker/Dockerfile) built with podman on a Debian 12
# base imported from a debootstrapped rootfs (no registry): localhost/envd-py
# with the overlay (:latest) and with the static overlay (:static).
image: overlay podman
	scripts/build-image.sh

# The bundle in a debootstrapped Debian rootfs as PID 1 and under systemd
# (systemd-nspawn --boot), the static variant in an empty chroot, and the
# image run by podman (root only; CI runs it after `make test`).
test-rootfs: $(PACKAGING_STAMP) system overlay image
	# The test rootfs tarballs, cached before the tests: a cold debootstrap inside a
	# fixture would count against the per-test timeout.
	scripts/debian-rootfs.sh bullseye >/dev/null
	scripts/debian-rootfs.sh bullseye systemd,systemd-sysv >/dev/null
	$(BIN)/python -m pytest -m rootfs $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache $(BROWSER)/node_modules $(BROWSER)/dist
