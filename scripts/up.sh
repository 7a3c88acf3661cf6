#!/usr/bin/env bash
# Bring LifeOps Mesh up on this machine: Mosquitto from broker/, every agent on SQLite under
# ./data, and a short demo. Installs what it needs. Extra arguments go to `lifeops-mesh up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
ensure_python
ensure_mosquitto
ensure_venv  # what running needs; scripts/test.sh adds the test extra
exec .venv/bin/lifeops-mesh up --demo "$@"
