# hallgate: `make demo` | `make test` | `make lint` | `make bench` | `make soak` | `make firmware`
# Every target sets itself up first: a .venv with the package and its test extra, and
# Debian's mosquitto, socat, systemd (systemd-analyze checks the unit's sandboxing),
# chromium (the pages' tests drive it headless, with Playwright), nats-server and
# postgresql (the city: a clustered broker and the workers' database, started by the tests
# on loopback ports), installed with apt-get when missing and running as root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STUBS  := $(VENV)/mpstubs
DEBS   := mosquitto socat systemd chromium nats-server postgresql
DEMO_HTTP ?= 127.0.0.1:8080
PYTEST := $(BIN)/python -m pytest

.PHONY: all setup system-deps test soak lint bench firmware demo clean

all: setup

setup: system-deps $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the tests run for real: the broker, the pty linker, systemd-analyze, the
# browser (Playwright's own browser download is never used: tests/test_web_pages.py).
system-deps:
	@missing=""; \
	for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing" >&2; \
	    echo "run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

test: setup
	$(PYTEST) -q

soak: setup
	$(PYTEST) -q -m soak

$(STUBS)/.installed: $(STAMP)
	$(BIN)/pip install -q --target $(STUBS) micropython-rp2-stubs
	touch $@

lint: setup $(STUBS)/.installed
	$(BIN)/ruff check hallgate protocols gateway sim central tests bench
	$(BIN)/pyright -p firmware/pyrightconfig.json

# Every benchmark once, then bench/RESULTS.md, results.json and latency.png (the plot needs
# the bench extra, matplotlib, installed here the first time).
bench: setup
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run_all.py

# A signed bundle per device role for a Pico (mpy-cross for armv6m), for `hallgate flash`
# and `hallgate ota`: make firmware KEY=signing.pem (a key from `hallgate keygen`).
firmware: setup
	@test -n "$(KEY)" || { echo "make firmware KEY=PRIVATE.pem  (make one: $(BIN)/hallgate keygen --private PRIVATE.pem --public PUBLIC.pub)"; exit 2; }
	mkdir -p build/firmware
	for role in call-panel window-display feedback-pad; do \
	  $(BIN)/hallgate firmware build --role $$role --key "$(KEY)" --out build/firmware/$$role.zip || exit 1; \
	done

# A simulated hall day: every part real, on this machine; its hall board and manager's view
# at the URLs it prints (make demo DEMO_HTTP=0.0.0.0:8080 to see them from another machine).
demo: setup
	$(BIN)/hallgate sim --http $(DEMO_HTTP)

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
