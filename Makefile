# emailrelay: the two commands of the README, and a few helpers.
#   make run   - create the virtual environment if missing, start the relay on embedded defaults
#   make test  - install what the tests need (Python and Debian packages), then run the whole suite
# The system interpreter when there is one: a --user such as daemon must be able to read the
# venv's interpreter and standard library (one under /root is not), see docs/decisions.md.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run circusd test venv test-deps lint bench-store bench-forward clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fast]'
	touch $@

venv: $(STAMP)

run: $(STAMP)
	mkdir -p var/spool var/run
	$(BIN)/emailrelay config/emailrelay-dev.conf

# The same relay under a plain circusd (circus.ini's header: the run directory comes first).
circusd: $(STAMP)
	mkdir -p var/spool var/run && mkdir -p -m 700 var/run/circus
	$(BIN)/circusd circus.ini

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[fast,test]'
	touch $@

test-deps: $(TEST_STAMP)
	sh tests/install-system-packages.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check emailrelay tests bench

test: test-deps lint
	$(BIN)/pytest -q -n 2 --dist loadfile -p no:cacheprovider --durations=25 tests

bench-store: $(TEST_STAMP)
	$(BIN)/python bench/store.py

bench-forward: $(TEST_STAMP)
	$(BIN)/python bench/forward.py

clean:
	rm -rf var build *.egg-info
