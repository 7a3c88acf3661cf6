"""The package as a user installs it: the wheel, in a fresh virtualenv, run outside the checkout.

Builds the wheel from this tree, installs it with its dependencies into a new venv (PyPI or pip's
cache), and runs `up --once` and `doctor` from an empty directory: nothing may be read from the
source tree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
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


def test_what_up_prints_exists_and_works_in_a_plain_install(
    installed: Path, tmp_path: Path
) -> None:
    """Every file `up` names exists: the broker's config and passwords, and its Home Assistant
    doc inside the installed package (not the checkout), with every file that doc links; its
    `try it` command, run as printed, gets its reply."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFEOPS_", "PYTHON"))}
    up = subprocess.Popen(
        [str(installed), "up", "--data", str(data), "--port", str(free_port()),
         "--metrics-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert up.stdout is not None
    for line in up.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("mesh is up") or len(lines) > 200:
            break
    out = "\n".join(lines)
    try:
        assert "mesh is up" in out, out
        try_it = lines[lines.index("try it:") + 1]
        run = subprocess.run(
            ["bash", "-c", try_it], capture_output=True, text=True, timeout=60, check=False
        )
        assert '"success":true' in run.stdout, run.stdout + run.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
        up.stdout.close()
    named = re.findall(r"(?:config|passwords in|line of|details:) (/[^\s,)]+)", out)
    assert len(named) == 4, out
    for path in map(Path, named):
        assert path.is_file(), path
    doc = Path(re.findall(r"details: (/\S+)\)", out)[0])
    assert doc.is_relative_to(installed.parent.parent) and doc.name == "homeassistant.md"
    links = re.findall(r"\]\(([^)#:]+)\)", doc.read_text(encoding="utf-8"))
    assert links, "the doc links its automations and dashboard files"
    for link in links:
        assert (doc.parent / link).is_file(), link


def test_the_doctor_hint_installs_what_it_needs(installed: Path, tmp_path: Path) -> None:
    """Without the Compose-spec parser `doctor` names a command that installs it where the
    package runs; run as printed, the next `doctor` checks compose.yaml. (Last in this module:
    it adds a package to the venv.)"""
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")

    def compose_findings() -> list[dict[str, str]]:
        doctor = _run([str(installed), "doctor", "--json"], cwd=tmp_path, timeout=120)
        report = json.loads(doctor.stdout)
        return [f for f in report["issues"] if f["service"] == "compose"]

    (finding,) = [f for f in compose_findings() if "not checked" in f["issue"]]
    command = finding["fix"].split(": ", 1)[1]
    assert shlex.split(command)[0] == str(installed.parent / "python"), command
    done = _run(["bash", "-c", command], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [f for f in compose_findings() if "not checked" in f["issue"]]
