# sipbridge: `make serve` runs a development server, `make test` runs every check, `make check`
# the fast ones (lint, types, the tests that start no server process) in under a minute.
# Both create .venv and install what they need; `make test` also installs the Debian packages the
# test suite drives (as root, with apt-get, only when missing) and the browser test's Node packages.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests need, checked with dpkg and installed only when missing.
# tshark reads the pcap files of call traces back (it installs without questions).
SYSTEM_PACKAGES := ca-certificates sip-tester sipsak baresip-core chromium redis-server tshark iproute2 kamailio
# gcc and libc6-dev build the compiled relay engine (src/sipbridge/_crelay.c; Python's headers come
# with Python itself).
SYSTEM_PACKAGES += gcc libc6-dev
# The browser test's Node packages (livekit-client, playwright-core, esbuild), installed with
# `npm ci` from the committed lockfile whenever it changes; node and npm come with the machine.
BROWSER_DIR := tests/browser
# The web console (console/, TypeScript + Vite): `npm ci` from its lockfile, then built into
# CONSOLE_DIST (git ignores it), which `sipbridge serve` serves at /console; rebuilt whenever a
# source changes. Without npm the build is skipped and /console says how to build it.
CONSOLE_DIR := console
CONSOLE_DIST := src/sipbridge/server/console_dist
CONSOLE_SOURCES := $(wildcard $(CONSOLE_DIR)/src/* $(CONSOLE_DIR)/index.html \
	$(CONSOLE_DIR)/vite.config.ts $(CONSOLE_DIR)/tsconfig.json $(CONSOLE_DIR)/package.json)
# The newest release of the `livekit` realtime SDK, in a venv of its own beside the one
# livekit-agents pins in .venv: tests/interop/test_sdk_versions.py runs tests/sdk_client.py with
# both. Rebuilt from scratch whenever the pin file changes.
SDK_NEWEST_VENV := .venv-sdk-newest
SDK_NEWEST_PINS := tests/sdk-newest-requirements.txt
PYTEST_ARGS ?=
# The sans-IO core whose own unit tests must cover it (branches included) at COVERAGE_MIN %;
# a package not there yet (sdp/ is being split out of sip/) is skipped, not failed.
CORE_PACKAGES := $(notdir $(wildcard $(addprefix src/sipbridge/,sip sdp media telephony)))
CORE_TESTS := $(wildcard $(addprefix tests/,$(CORE_PACKAGES)))
COVERAGE_MIN := 95
# What `make check` runs: every test that needs no `sipbridge serve` process nor peer.
CHECK_TESTS := tests/test_layers.py $(CORE_TESTS) $(wildcard tests/rooms tests/store tests/server) \
	tests/test_config.py tests/test_config_trace_rtp.py tests/test_fuzz_corpus.py \
	tests/test_audio_measures.py tests/test_cli_credentials.py
# The rest of the suite runs in TEST_WORKERS processes (pytest-xdist, one file per worker at a
# time: a file's shared server stays in one process), except the tests marked `serial`, which run
# alone after it: their assertions are about real time (WebRTC clients and browsers hearing a
# phone from its first word, levels, a flood's latency) and a machine busy with other tests
# skews them.
TEST_WORKERS ?= 3
CORE_WORKERS ?= 2  # the core's unit tests use the CPU alone: one worker per core
# Fuzzing (fuzz/README.md): `make fuzz` runs every target FUZZ_SECONDS, keeping what it learns in
# fuzz/work/; `make fuzz-smoke` (part of `make test`) FUZZ_SMOKE_RUNS inputs each from seed
# FUZZ_SEED, with FUZZ_SMOKE_SECONDS as a cap. FUZZ_TARGETS picks targets (all by default).
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_RUNS ?= 4000
FUZZ_SMOKE_SECONDS ?= 6
FUZZ_SEED ?= 1
FUZZ_TARGETS ?=

# Each test starts its own server processes: let Python keep the bytecode it compiles (an
# environment with PYTHONDONTWRITEBYTECODE set recompiled a hundred modules, 0.2 s, per start).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: serve test check install crelay compiled core-compiled interpreted system-deps browser-deps console sdk-newest lint typecheck coverage-core unit bench \
	clean fuzz fuzz-smoke asan

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# setup.py's C extensions build with the venv's own setuptools, which must read pyproject.toml's
# SPDX `license` string (setuptools 77 and later; a venv made before it gets it here too).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade 'setuptools>=77'
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The compiled relay engine, built in place (`setup.py`, optional): when it cannot be built the
# relay takes the pure-Python path, which `SIPBRIDGE_NO_CRELAY=1` also forces. Built with it, as
# optional: the SIP UDP socket's reader thread (_csipthr.c, the default when built; without it, or
# with `SIPBRIDGE_SIP_UDP=endpoint`, the event loop's datagram endpoint) and its batched UDP I/O
# (_csipudp.c, used by the thread's sends and when `SIPBRIDGE_SIP_UDP=batched` asks for it), and
# the C cut of a SIP message's head (_csipmsg.c, sip/message.py; `SIPBRIDGE_NO_CSIPMSG=1` or a
# failed build: the Python parser alone).
$(VENV)/.crelay: src/sipbridge/_crelay.c src/sipbridge/_csipudp.c src/sipbridge/_csipthr.c src/sipbridge/_csipmsg.c src/sipbridge/_sockaddr.h src/sipbridge/_pyaddr.h setup.py | $(VENV)/.installed
	@if $(BIN)/python setup.py -q build_ext --inplace >$(VENV)/crelay-build.log 2>&1 && \
		ls src/sipbridge/_crelay*.so >/dev/null 2>&1; then \
		touch $@; \
	else \
		echo "warning: the relay engine did not build (see $(VENV)/crelay-build.log): pure-Python relay"; \
	fi

crelay: $(VENV)/.crelay

# The sans-IO core and the SIP driver compiled by mypyc (setup.py's COMPILED, from the same .py
# files: C extensions beside them, imported before the sources), about 2x less CPU per call.
# Python imports the sources instead when SIPBRIDGE_INTERPRETED=1, when the build failed, or
# when a source changed after it (`src/sipbridge/_compiled.py`); `make` builds again.
COMPILED_SOURCES := $(shell find src/sipbridge/sip src/sipbridge/sdp src/sipbridge/media \
	src/sipbridge/telephony src/sipbridge/rooms src/sipbridge/server/sip \
	src/sipbridge/server/calls src/sipbridge/server/media src/sipbridge/server/state -name '*.py') \
	src/sipbridge/server/deadline.py \
	$(addprefix src/sipbridge/server/rtc/,join.py own_requests.py room_stats.py session.py signal.py updates.py writer.py) \
	$(addprefix src/sipbridge/server/api/,room_api.py twirp.py)
$(VENV)/.compiled: $(COMPILED_SOURCES) setup.py $(VENV)/.crelay | $(VENV)/.installed
	@echo "compiling the core with mypyc (a minute or two)"
	@rm -f src/*__mypyc*.so src/sipbridge/_compiled.json
	@if SIPBRIDGE_COMPILE=1 $(BIN)/python setup.py -q build_ext --inplace -j 2 \
		>$(VENV)/compile.log 2>&1; then \
		touch $@; \
	else \
		rm -f src/sipbridge/_compiled.json; \
		echo "warning: the core did not compile (see $(VENV)/compile.log): it runs from source"; \
	fi

compiled: $(VENV)/.compiled

install: $(VENV)/.installed crelay compiled

serve: install console
	$(BIN)/sipbridge serve --dev

system-deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error && \
		touch node_modules/.installed; \
	else \
		echo "npm not found: tests/interop/test_browser.py will skip"; \
	fi

browser-deps: $(BROWSER_DIR)/node_modules/.installed

$(CONSOLE_DIR)/node_modules/.installed: $(CONSOLE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(CONSOLE_DIR) && npm ci --no-audit --no-fund --loglevel=error && \
		touch node_modules/.installed; \
	else \
		echo "npm not found: the web console is not built (/console says how)"; \
	fi

$(CONSOLE_DIST)/index.html: $(CONSOLE_DIR)/node_modules/.installed $(CONSOLE_SOURCES)
	@if [ -f $(CONSOLE_DIR)/node_modules/.installed ]; then \
		cd $(CONSOLE_DIR) && npm run --silent build; \
	fi

console: $(CONSOLE_DIST)/index.html

$(SDK_NEWEST_VENV)/.installed: $(SDK_NEWEST_PINS)
	rm -rf $(SDK_NEWEST_VENV)
	$(PYTHON) -m venv $(SDK_NEWEST_VENV)
	$(SDK_NEWEST_VENV)/bin/python -m pip install -q -r $(SDK_NEWEST_PINS)
	touch $@

sdk-newest: $(SDK_NEWEST_VENV)/.installed

lint: install
	$(BIN)/ruff check src tests bench examples fuzz
	$(BIN)/ruff format --check src tests bench examples fuzz

typecheck: install
	$(BIN)/mypy

check: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider $(CHECK_TESTS)

# The core's own tests alone, then its coverage per package: at least COVERAGE_MIN % each.
# They run from the sources (coverage sees no compiled code) and without the C cut of SIP heads
# (_csipmsg), which also tests those fallbacks;
# `core-compiled` runs them again on the compiled build.
coverage-core: install
	$(BIN)/coverage erase
	SIPBRIDGE_INTERPRETED=1 SIPBRIDGE_NO_CSIPMSG=1 $(BIN)/pytest -q -n $(CORE_WORKERS) $(CORE_TESTS) \
		$(addprefix --cov=sipbridge.,$(CORE_PACKAGES)) --cov-branch --cov-report=
	@for p in $(CORE_PACKAGES); do \
		echo "== sipbridge.$$p from tests/$$p"; \
		$(BIN)/coverage report --include="*/sipbridge/$$p/*" --precision=1 \
			--fail-under=$(COVERAGE_MIN) || exit 1; \
	done

# The core's and the rooms' unit tests on the compiled build (`make compiled`), when it built.
core-compiled: install
	@if [ -f src/sipbridge/_compiled.json ]; then \
		$(BIN)/pytest -q -p no:cacheprovider -n $(CORE_WORKERS) $(CORE_TESTS) tests/rooms; \
	else \
		echo "no compiled build: core-compiled skipped"; \
	fi

# The rooms' and the server's in-process tests from the sources: what a plain `pip install`
# (nothing compiled) runs, since `unit` runs them on the compiled build.
interpreted: install
	SIPBRIDGE_INTERPRETED=1 $(BIN)/pytest -q -p no:cacheprovider -n $(CORE_WORKERS) tests/rooms \
		tests/server

# Everything else, appended to the core's run: the report covers the whole suite, and no test
# runs twice. First in parallel, then the `serial` tests alone.
unit: coverage-core core-compiled interpreted
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" --cov=sipbridge --cov-branch \
		--cov-append --cov-report= $(addprefix --ignore=,$(CORE_TESTS)) $(PYTEST_ARGS)
	$(BIN)/pytest -m serial --cov=sipbridge --cov-branch --cov-append --cov-report=term \
		$(addprefix --ignore=,$(CORE_TESTS)) $(PYTEST_ARGS)

test: system-deps install browser-deps console sdk-newest lint typecheck unit fuzz-smoke

fuzz: install
	$(BIN)/python -m fuzz.run --keep --seconds $(FUZZ_SECONDS) --seed 0 $(FUZZ_TARGETS)

fuzz-smoke: install
	$(BIN)/python -m fuzz.run --runs $(FUZZ_SMOKE_RUNS) --seconds $(FUZZ_SMOKE_SECONDS) \
		--seed $(FUZZ_SEED) $(FUZZ_TARGETS)

# The hand-written C extensions under AddressSanitizer and UBSan (fuzz/asan.sh, fuzz/README.md),
# built in build/asan apart from the normal build: the hostile inputs of fuzz/hostile.py, then
# the fuzz smoke of the targets that reach C (FUZZ_SMOKE_RUNS inputs each, ASAN_SECONDS at most).
# Not part of `make test`: a few minutes.
ASAN_SECONDS ?= 60
asan: install
	PYTHON=$(abspath $(BIN)/python) fuzz/asan.sh python -m fuzz.hostile
	ASAN_REUSE=1 PYTHON=$(abspath $(BIN)/python) FUZZ_SMOKE_RUNS=$(FUZZ_SMOKE_RUNS) \
		FUZZ_SMOKE_SECONDS=$(ASAN_SECONDS) FUZZ_SEED=$(FUZZ_SEED) FUZZ_TARGETS="$(FUZZ_TARGETS)" \
		fuzz/asan.sh

bench: install
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) $(SDK_NEWEST_VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build src/*.egg-info src/*.so src/sipbridge/_compiled.json
	find src/sipbridge -name '*.so' -delete
