#!/bin/sh
# Build the lifeops-mesh wheel into wheels/, where the Dockerfile installs it from: the
# Supervisor builds the app with this folder as its build context, without the repository root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
rm -f "$here"/wheels/lifeops_mesh-*.whl
"$python" -m pip wheel --no-deps --wheel-dir "$here/wheels" "$root"
ls "$here"/wheels/lifeops_mesh-*.whl
