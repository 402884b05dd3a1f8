# One entry point. `make demo` runs the pipeline end to end on a local stack; `make test` runs
# the tests (`make test-unit`: the unit tier alone, no server). Both install what is missing first
# (system packages, then the virtualenv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install system-deps browser-deps s3rver-deps bench-deps demo dev test test-unit test-example screenshots bench bench-transports \
	bench-discovery bench-quick bench-smoke soak soak-short lint format

install: system-deps $(VENV)/.installed

# sshd for the SFTP server, PostgreSQL for the transfer log and the Dagster instance, GnuPG to
# decrypt PGP-encrypted files (pgp.py).
system-deps:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v gpg >/dev/null || missing="$$missing gnupg"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Debian's Chromium and its driver, for the test that drives the Dagster UI
# (integration/test_ui.py).
browser-deps:
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { \
		echo "installing: chromium chromium-driver"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# rclone (the reference the benchmark compares with) and OpenSSH's sftp client.
bench-deps:
	@command -v rclone >/dev/null && command -v sftp >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends rclone openssh-client; }

# s3rver (npm), an S3 server that does not verify checksums, for the test of the fallback
# (integration/test_checksums.py); Debian's Node.js and npm if missing.
S3RVER_VERSION := 3.7.1
s3rver-deps:
	@[ -x build/s3rver/node_modules/.bin/s3rver ] || { \
		command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }; \
		npm install --prefix build/s3rver --no-audit --no-fund --loglevel=error s3rver@$(S3RVER_VERSION); }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python -m devstack.demo run

dev: install
	$(BIN)/python -m devstack.demo dev

# The unit tier first (a broken build fails in seconds), then every test that needs a server,
# in two processes (each with its own stack, a test module's tests in one of them): most of a
# test's time is spent waiting on the servers, the daemon and the runs it starts.
test: install browser-deps s3rver-deps
	$(MAKE) test-unit
	$(BIN)/python -m pytest -m integration -n 2 --dist loadfile --durations=40

# The example project's own tests (examples/partner_csv, no server; its end-to-end test through
# the daemon is integration/test_example.py).
test-example: $(VENV)/.installed
	cd examples/partner_csv && $(abspath $(BIN))/python -m pytest -q partner_csv_tests

# The tests that need no server (not marked `integration`): seconds, on the virtualenv alone.
test-unit: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not integration"
	$(MAKE) test-example

# docs/screenshots/ from the UI test, which otherwise writes them to a temporary folder.
screenshots: install browser-deps
	@shots=$$(mktemp -d) && \
	SCREENSHOTS_DIR=$$shots $(BIN)/python -m pytest -p no:cacheprovider sftp_minio_assets_tests/integration/test_ui.py && \
	cp $$shots/*.png docs/screenshots/ && rm -r $$shots && ls -l docs/screenshots/

bench: install bench-deps
	$(BIN)/python -m benchmarks.run

bench-quick: install bench-deps
	$(BIN)/python -m benchmarks.run --quick

# CI's check that the benchmark still runs end to end (the daemon, rclone, the report): one small
# workload of bench-quick, every tool; nothing is asserted about timings.
bench-smoke: install bench-deps
	$(BIN)/python -m benchmarks.run --quick --workload "500 x 4 KiB" --json /tmp/bench-smoke.json

# The chaos run (devstack/soak.py): 30 minutes of files arriving while sshd, S3, PostgreSQL,
# the daemon and run workers are killed, connections cut and S3 throttled; then it checks
# from outside that every file landed once, whole. soak-short: its 2-minute variant (CI's).
soak: install
	$(BIN)/python -m devstack.soak

soak-short: install
	$(BIN)/python -m devstack.soak --short

# The SSH transports reading 1 GiB to nothing (OpenSSH's sftp, paramiko, an ssh child): a minute.
bench-transports: install bench-deps
	$(BIN)/python -m benchmarks.transports

# One sensor tick over trees of 10k to 1M one-byte files (first and steady), the project's SFTP
# listing alone and OpenSSH's sftp listing them: long, the 1M tree alone takes minutes to build.
bench-discovery: install bench-deps
	$(BIN)/python -m benchmarks.discovery

# ruff, then the layers: each imports only those below it, and only defs/ imports dagster
# (the contracts are in pyproject.toml); then mypy over the package ([tool.mypy] there too).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
