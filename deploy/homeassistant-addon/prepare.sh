#!/bin/sh
# Build the lifeops-mesh wheel into wheels/, where the Dockerfile installs it from: the
# Supervisor builds the app with this folder as its build context, without the repository root,
# so the wheel is committed. tests/deploy/test_addon_repository.py rebuilds it the same way and
# fails when the committed one no longer matches the source: run this and commit wheels/.
#
# The wheel is built from a copy of the files git tracks or would track (as they are in the
# working tree): no ignored file, and no stale build/ of an earlier run, can end up in it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" - "$root" "$tmp/src" <<'PY'
import os, shutil, subprocess, sys

root, dest = sys.argv[1:]
listed = subprocess.run(
    ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True, check=True,
).stdout.split(b"\0")
for name in filter(None, map(os.fsdecode, listed)):
    src, dst = os.path.join(root, name), os.path.join(dest, name)
    if not os.path.lexists(src) or name.endswith(".whl"):
        continue  # deleted in the working tree; the committed wheel itself
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)
PY
out=${LIFEOPS_WHEEL_DIR:-$here/wheels}  # the test builds elsewhere, to compare
# One setuptools for every build (pip's isolated build environment takes the constraint), so
# the same source gives the same wheel whenever and wherever it is built.
echo "setuptools==84.2.1" > "$tmp/build-constraints.txt"
rm -f "$out"/lifeops_mesh-*.whl
# Fixed zip timestamps too (the wheel builder honours SOURCE_DATE_EPOCH): an unchanged source
# rebuilds to the same bytes, so git sees no change.
PIP_CONSTRAINT="$tmp/build-constraints.txt" SOURCE_DATE_EPOCH=315532800 \
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$tmp/src"
ls -l "$out"/lifeops_mesh-*.whl
