"""The `lifeops-mesh` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lifeops_mesh.processes import agent_process
from mesh.broker.process import MosquittoProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_up_brings_the_mesh_up_and_finds_its_data_again(tmp_path: Path) -> None:
    """`up --demo --once` starts Mosquitto and the agents, logs XP; a second run finds it all."""
    data = tmp_path / "data"
    port = str(free_port())
    first = _cli(
        "up", "--data", str(data), "--port", port, "--demo", "--once", "--metrics-port", "0"
    )
    assert first.returncode == 0, first.stderr + first.stdout
    assert f"mosquitto: 127.0.0.1:{port}" in first.stdout
    assert "agent stats: online" in first.stdout
    assert "demo: gym_session  -> Gained XP: STR+50, STA+20" in first.stdout
    assert "mesh stopped" in first.stdout
    second = _cli(
        "up", "--data", str(data), "--port", port, "--demo", "--once", "--metrics-port", "0"
    )
    assert second.returncode == 0, second.stderr
    assert "(already logged today)" in second.stdout
    assert "total XP 155" in second.stdout
    assert "demo: completed morning_stretch (streak 1)" in first.stdout
    assert "morning_stretch: Morning stretch is already completed" in second.stdout
    assert (data / "stats.db").exists() and (data / "broker" / "credentials.toml").exists()
    assert oct((data / "broker" / "credentials.toml").stat().st_mode & 0o777) == "0o600"


def test_run_takes_broker_and_db_from_the_environment(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """`lifeops-mesh run stats` with LIFEOPS_BROKER_URL and LIFEOPS_DB_URL; SIGTERM is clean."""
    proc = agent_process(
        "stats",
        broker.url("stats"),
        f"sqlite:///{tmp_path / 'env.db'}",
        data_dir=tmp_path,
        instance="envtest",
    )
    proc.args = [sys.executable, "-m", "lifeops_mesh", "run", "stats", "--instance", "envtest"]
    proc.env.update(
        {
            "LIFEOPS_BROKER_URL": broker.url("stats"),
            "LIFEOPS_DB_URL": f"sqlite:///{tmp_path / 'env.db'}",
        }
    )
    proc.start()
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0
    assert (tmp_path / "env.db").exists()
    assert any('"stats stopped"' in ln for ln in proc.lines), proc.lines[-5:]


def test_run_refuses_bad_configuration_clearly() -> None:
    """No broker, or an unknown database scheme: exit 2 with a message that says what to do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEOPS_")}
    r = subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "run", "stats"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "LIFEOPS_BROKER_URL" in r.stderr
    r = _cli("run", "stats", "--broker", "mqtt://127.0.0.1:1", "--db", "mysql://x/y")
    assert r.returncode == 2 and "unsupported database URL" in r.stderr


def test_broker_tooling(tmp_path: Path) -> None:
    """`broker acl` prints the committed ACL; `broker passwords` makes per-install accounts."""
    acl = _cli("broker", "acl")
    assert acl.returncode == 0 and acl.stdout == (ROOT / "broker" / "acl").read_text()
    pw = _cli("broker", "passwords", "--dir", str(tmp_path))
    assert pw.returncode == 0, pw.stderr
    passwd = (tmp_path / "passwd").read_text()
    for name in ("lifeops", "stats", "ha_bridge", "tester"):
        assert passwd.count(f"{name}:") == 1
    creds = (tmp_path / "credentials.toml").read_text()
    rotated = _cli("broker", "passwords", "--dir", str(tmp_path), "--rotate")
    assert rotated.returncode == 0
    assert (tmp_path / "credentials.toml").read_text() != creds


def test_up_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) stops the agents and the broker; the exit code is 0."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lifeops_mesh",
            "up",
            "--data",
            str(tmp_path),
            "--port",
            str(free_port()),
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "mesh is up" in line or time.monotonic() > deadline:
            break
    assert any("mesh is up" in ln for ln in lines), lines
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "mesh stopped" in out
    assert (
        "mosquitto"
        not in subprocess.run(
            ["pgrep", "-af", str(tmp_path)], capture_output=True, text=True
        ).stdout
    )
