"""The "Poke it by hand" block of docs/contract.md (the README sends readers there), run as
written against `lifeops-mesh up`.

The block is taken from docs/contract.md itself (so a change there is tested), with only the port
changed to a free one and a bound (-W) added to the one command that runs until Ctrl-C.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mesh.broker.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def _block() -> str:
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text.split("## Poke it by hand", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block under 'Poke it by hand'"
    return match.group(1)


def test_the_readme_commands_work_as_written(tmp_path: Path) -> None:
    """Every mosquitto_rr of the block gets the reply the page shows beside it; the bad
    message ends as a dead letter; the watch command sees the retained sheet."""
    block = _block()
    assert "-p 1884" in block and "data/broker/credentials.toml" in block
    port = str(free_port())
    script = block.replace("-p 1884", f"-p {port}")
    script = script.replace("mosquitto_sub -V mqttv5", "mosquitto_sub -W 3 -V mqttv5")
    up = subprocess.Popen(
        [sys.executable, "-m", "lifeops_mesh", "up", "--data", "data", "--port", port,
         "--metrics-port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert up.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("mesh is up" in ln for ln in lines):
            assert up.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        run = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
        reader.join(5)
        up.stdout.close()
    out = run.stdout
    replies = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert '"message":"Gained XP: STR+50, STA+20"' in replies[0], out
    assert '"xp_granted":{"STR":50,"STA":20}' in replies[0]
    assert '"new_streak":1' in replies[1] and '"xp_granted":{"STA":5,"DEX":10}' in replies[1]
    assert '"xp_pending":false' in replies[1], replies[1]
    assert '"timeline"' in replies[2] and '"timezone":"Europe/Berlin"' in replies[3]
    assert '"character"' in replies[4] and '"success":true' in replies[4]
    assert all('"success":true' in r for r in replies[:5]), replies
    assert "stats/character/alice " in out  # the watch command's retained sheet
    assert run.stderr.count("Timed out") <= 1, run.stderr  # only the bounded mosquitto_sub
    log = (tmp_path / "data" / "mesh.log").read_text()
    assert "dead letter from stats/activities/log" in log, log[-2000:]
