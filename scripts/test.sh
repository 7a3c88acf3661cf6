#!/usr/bin/env bash
# Run the whole test suite: lint, format check, strict type check, then pytest against a real Mosquitto (started by
# the tests on free ports from broker/) and PostgreSQL. Installs what it needs.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
ensure_python
ensure_mosquitto
ensure_venv test
ensure_postgres_for_tests
ensure_test_tools
ensure_compose_tools
log "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
log "mypy (strict)"
.venv/bin/mypy
log "pytest"
exec .venv/bin/python -m pytest "$@"
