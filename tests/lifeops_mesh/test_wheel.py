"""The package as a user installs it: the wheel, in a fresh virtualenv, run outside the checkout.

Builds the wheel from this tree, installs it with its dependencies into a new venv (PyPI or pip's
cache), and runs `up --once` and `doctor` from an empty directory: nothing may be read from the
source tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.broker.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFEOPS_", "PYTHON"))}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`lifeops-mesh` of a fresh venv that holds only the wheel and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "-w", str(work / "dist"), str(ROOT)],
        cwd=work, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("lifeops_mesh-*.whl")
    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=work, timeout=120)
    assert made.returncode == 0, made.stderr
    pip = _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        cwd=work, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin" / "lifeops-mesh"


def test_the_wheel_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    """`up --demo --once` and `doctor` from an empty directory, with the wheel's files only."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not (outside / "topics.toml").exists()
    port = str(free_port())
    up = _run(
        [str(installed), "up", "--data", str(outside / "data"), "--port", port, "--demo",
         "--once", "--metrics-port", "0"],
        cwd=outside, timeout=180,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"mosquitto: 127.0.0.1:{port}" in up.stdout
    assert "demo: gym_session  -> Gained XP: STR+50, STA+20" in up.stdout
    doctor = _run([str(installed), "doctor", "--json"], cwd=outside, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["checklist"] and all(c["ok"] for c in report["checklist"]), report["checklist"]
    check = _run([str(installed), "contract", "check"], cwd=outside, timeout=60)
    assert check.returncode == 0 and "entries, sound" in check.stdout, check.stdout + check.stderr
    listed = _run([str(installed), "request", "--list"], cwd=outside, timeout=60)
    assert "stats/activities/log" in listed.stdout, listed.stderr
    # the wheel is what it says: no test extra inside, so no test-only module was needed above
    site = installed.parent.parent / "lib"
    assert not list(site.glob("python3*/site-packages/hypothesis")), "test extra leaked in"
