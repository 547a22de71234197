# embedcluster: `make demo` runs the whole thing locally, `make test` runs every test.
# Both install what they need (system packages via apt when missing, then a venv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8000
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test unit contract integration system-deps install bench clean

demo: install
	$(BIN)/embedcluster demo --port $(PORT)

test: install
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider
	$(BIN)/python -m pytest tests/contract -q -p no:cacheprovider
	$(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -x --durations=30

unit: install
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

# the VectorSink contract, one set of cases on every sink (tests/contract/conftest.py: SINK_KINDS)
contract: install
	$(BIN)/python -m pytest tests/contract -q -p no:cacheprovider

integration: install
	$(BIN)/python -m pytest tests/integration -q -p no:cacheprovider

install: system-deps $(STAMP)

# PostgreSQL server binaries (initdb, pg_ctl) for the demo and tests, MariaDB for the MySQL sink tests,
# Chromium for the search page's browser test (driven by Playwright, tests/integration/test_search_page.py),
# iproute2 for the multi-node test's network namespace (tests/integration/test_multinode.py),
# gcc for the CDC reader's compiled row-change decoder (actors/_pgtuple.pyx; optional, but the tests expect it).
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server-core mariadb-client-core"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	  $$SUDO systemctl disable --now postgresql mariadb >/dev/null 2>&1 || true; \
	fi

$(STAMP): pyproject.toml constraints.txt setup.py actors/_pgtuple.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $(STAMP)

bench: install
	$(BIN)/embedcluster bench --help

clean:
	rm -rf $(VENV) .embedcluster build *.egg-info
