# TwinStack — one Makefile for set-up, the simulated board, tests and board builds.
#
#   make sim                     run the simulated board and show traffic crossing its wire
#   make test                    install everything, then run every test (firmware + host + e2e)
#   make build BOARD=<name>      cross-compile firmware + board file into build/<name>/
#   make deploy BOARD=<name> PORT=<dev>   copy build/<name>/ to a board with mpremote
#   make lint                    ruff over host, tools and tests
#
# Everything is installed into a project-local virtual environment (.venv) with the pinned
# versions of requirements-dev.txt; Debian packages come from `make deps` (root or sudo).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOARD  ?= w5500_evb_pico
PORT   ?= auto

# (valgrind: make bench's counted yardstick, instructions per segment on the unix port)
DEBIAN_PACKAGES := iproute2 ethtool tcpdump iputils-ping iputils-arping procps util-linux curl apache2-utils valgrind

# Non-root users get a private user + network + mount namespace for everything that touches
# the network; root runs directly.
NETNS_WRAP := $(shell [ "$$(id -u)" = 0 ] || echo "unshare --map-root-user --net --mount --propagation private --fork sh -c 'mount -t tmpfs tmpfs /run && exec \"$$0\" \"$$@\"'")

.PHONY: all setup deps venv sim test test-fast bench build deploy lint clean

all: test

setup: deps venv

# Debian packages the network tests need. Skipped (with a note) when they are all present.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): requirements-dev.txt host/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q -e host
	touch $@

sim: setup
	$(NETNS_WRAP) $(BIN)/python tools/sim_demo.py

test: setup
	$(NETNS_WRAP) $(BIN)/python -m pytest

# Firmware and host unit tests only (no namespaces, no root).
test-fast: venv
	$(BIN)/python -m pytest tests/firmware tests/host

bench: setup
	$(NETNS_WRAP) $(BIN)/python tools/bench.py

build: venv
	$(BIN)/python tools/build_firmware.py --board $(BOARD) --out build/$(BOARD)

deploy: build
	$(BIN)/mpremote connect $(PORT) fs cp -r build/$(BOARD)/. : + soft-reset

lint: venv
	$(BIN)/ruff check host tools tests

clean:
	rm -rf build .pytest_cache
