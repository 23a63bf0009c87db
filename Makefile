# The two commands a newcomer runs: `make demo` and `make test`.
# Both install what they need: a venv in .venv, the Debian packages below (apt-get),
# buf and the Node hook server's packages (npm, pinned).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
GEN_DIR := upparat/hooks/v1
PROTO := proto/upparat/hooks/v1/hooks.proto

.PHONY: test demo bench venv deps packages node-deps generate check-generated lint typecheck buflint pytest clean

test: deps check-generated lint typecheck buflint pytest

demo: deps
	$(PY) -m upparat.demo

bench: deps
	$(PY) bench/run.py

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

deps: venv packages node-deps

# The Debian packages the product meets, each as package:file-it-installs: the broker,
# RAUC (rauc service on a private D-Bus bus, mksquashfs for bundles), SWUpdate, openssl
# for the test CAs. apt-get runs only when a file is missing, for the missing ones.
PACKAGES := mosquitto:/usr/sbin/mosquitto rauc:/usr/bin/rauc \
	rauc-service:/usr/share/dbus-1/system.d/de.pengutronix.rauc.conf \
	squashfs-tools:/usr/bin/mksquashfs dbus:/usr/bin/dbus-daemon \
	swupdate:/usr/bin/swupdate openssl:/usr/bin/openssl

packages:
	@missing=; for item in $(PACKAGES); do \
	  test -e "$${item#*:}" || missing="$$missing $${item%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing with apt-get:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	fi

node-deps: $(TOOLS)/.installed hookservers/node/node_modules/.installed

$(TOOLS)/.installed:
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)
	touch $@

hookservers/node/node_modules/.installed: hookservers/node/package.json hookservers/node/package-lock.json
	@if command -v npm >/dev/null 2>&1 && test -f hookservers/node/package-lock.json; then \
	  cd hookservers/node && npm ci --silent --no-audit --no-fund --ignore-scripts && touch node_modules/.installed; \
	else echo "node hook server: npm or package-lock.json missing, its tests will be skipped"; fi

# Regenerate the committed protobuf/gRPC code from the contract.
generate: venv
	$(PY) -m upparat.hooks.codegen --out $(GEN_DIR)

check-generated: venv
	$(PY) -m upparat.hooks.codegen --check $(GEN_DIR)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

buflint: node-deps
	$(BUF) lint
	$(BUF) format --diff --exit-code

pytest: venv packages node-deps
	$(VENV)/bin/pytest -q -n 3 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) $(TOOLS) hookservers/node/node_modules
