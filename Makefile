# Set-up, run and test. Every target installs what it needs first (scripts/install.sh).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck imports pytest conformance services bench-ingest bench-api bench-defense bench-overhead bench-faults bench-dashboard bench-judge clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt scripts/install.sh pyproject.toml
	bash scripts/install.sh
	touch $(STAMP)

serve: install
	$(BIN)/ftaas serve

services:
	bash scripts/services.sh

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy api core worker defense cli bench migrations

imports: install
	$(BIN)/lint-imports

pytest: install services
	$(BIN)/pytest -q

# Schemathesis against the live API, once with a user key and once with an admin key (also part
# of `make pytest`; this target runs it alone).
conformance: install
	$(BIN)/pytest -q -m conformance

# The whole check CI runs: format, lint, types, import rules, tests (conformance included).
test: lint typecheck imports pytest

bench-ingest: install
	$(BIN)/python bench/ingest.py

bench-api: install services
	$(BIN)/python bench/api_load.py

bench-defense: install
	$(BIN)/python bench/defense.py

bench-judge: install
	$(BIN)/python bench/judge.py

bench-overhead: install
	$(BIN)/python bench/overhead.py

# Fault injection, repeated (needs root, redis-server and the PostgreSQL server binaries).
bench-faults: install
	$(BIN)/python bench/faults.py

bench-dashboard: install services
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
