"""The existing-broker path, walked: Home Assistant OS with the official Mosquitto broker app.

A Mosquitto is set up the way that app sets itself up (home-assistant/addons mosquitto/:
rootfs/etc/cont-init.d/mosquitto.sh, rootfs/usr/share/tempio/mosquitto.gtpl), configured only
from what `lifeops-mesh broker accounts --for mosquitto-addon` printed:

- the app's own `homeassistant` and `addons` users (random passwords, as it makes them), and
  each entry of the printed `logins` turned into a password with mosquitto_passwd (the app
  hashes them with its `pw` tool for its auth plugin, which is not available here: a Mosquitto
  password file stands in for it);
- the printed files put into the `customize` folder under a share directory, which the
  config includes with `include_dir` as the app's template does (`/share` in the printed text
  is where that directory is mounted in the app).

Then the printed `up --broker ... --credentials ...` runs the mesh against it, and the real Home
Assistant core (tests/support/homeassistant.py) logs in as the app's `homeassistant` user, as
its MQTT integration does: the entities appear, and a button pressed in HA grants XP. The ACL is
active: a mesh account is refused outside its rights, while `addons` may publish anywhere. Last,
the LifeOps Mesh app's run script joins the same broker with the `addons` account the
Supervisor hands out. Apart from that, `--for mosquitto --out DIR` for any other Mosquitto: the
written files included as they are, the mesh on them, Home Assistant's account reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.broker.process import free_port
from tests.support.homeassistant import HomeAssistantProcess
from tests.support.supervisor import MOSQUITTO_SERVICE, TOKEN, Supervisor, serving
from tests.support.tools import mosquitto_tool

pytestmark = pytest.mark.timeout(900)

USER = "alice"
RUN_PY = Path(__file__).resolve().parents[2] / "deploy" / "homeassistant-addon" / "run.py"


def printed_blocks(text: str) -> dict[str, str]:
    """The `----- NAME -----` blocks of the printed text."""
    blocks: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        header = re.fullmatch(r"----- (\S+) -----", line)
        if header or line == "-----":
            name = header.group(1) if header else None
            if name:
                blocks[name] = ""
        elif name:
            blocks[name] += line + "\n"
    return blocks


@dataclass
class AddonBroker:
    port: int
    passwords: dict[str, str]  # the app's own users
    log: Path
    printed: str


@pytest.fixture(scope="module")
def addon_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AddonBroker]:
    tmp = tmp_path_factory.mktemp("mosquitto-app")
    printed = subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "broker", "accounts", "--for", "mosquitto-addon",
         "--credentials", str(tmp / "mesh" / "accounts.toml")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    blocks = printed_blocks(printed)
    options = yaml.safe_load(blocks.pop("options.yaml"))
    assert options["customize"]["active"] is True
    folder = options["customize"]["folder"]
    # the app's own users, then the logins option (cont-init.d/mosquitto.sh)
    own = {"homeassistant": secrets.token_hex(32), "addons": secrets.token_hex(32)}
    logins = [(lg["username"], lg["password"]) for lg in options["logins"]]
    assert not {u for u, _ in logins} & set(own), "reserved names in logins"
    pw = tmp / "pw"
    for n, (user, password) in enumerate([*own.items(), *logins]):
        subprocess.run(
            [mosquitto_tool("mosquitto_passwd"), *(["-c"] if n == 0 else []), "-b", str(pw),
             user, password],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    share = tmp / "share"
    for name, text in blocks.items():
        assert name.startswith(f"share/{folder}/"), name  # nothing else to put anywhere
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("/share/", f"{share}/"), encoding="utf-8")
    port = free_port()
    log = tmp / "mosquitto.log"
    (tmp / "data").mkdir()
    # mosquitto.gtpl without TLS and websockets, on a free port of 127.0.0.1
    (tmp / "mosquitto.conf").write_text(
        f"user root\nlog_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n"
        f"log_type information\npersistence true\npersistence_location {tmp / 'data'}/\n"
        f"max_queued_messages 8192\npassword_file {pw}\ninclude_dir {share / folder}\n"
        f"listener {port} 127.0.0.1\nprotocol mqtt\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [mosquitto_tool("mosquitto"), "-c", str(tmp / "mosquitto.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "running" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr and proc.poll() is not None else "no start"
            )
            time.sleep(0.05)
        yield AddonBroker(port, own, log, printed)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@dataclass
class Mesh:
    proc: subprocess.Popen[str]
    lines: list[str]


@pytest.fixture(scope="module")
def mesh(addon_broker: AddonBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The printed `lifeops-mesh up --broker ... --credentials ...`, with the app's address."""
    match = re.search(r"^# \d+\. On the machine of the mesh: (lifeops-mesh up .+)$",
                      addon_broker.printed, re.M)  # fmt: skip
    assert match, addon_broker.printed
    command = match.group(1).replace(
        "HOME_ASSISTANT_ADDRESS:1883", f"127.0.0.1:{addon_broker.port}"
    )
    args = shlex.split(command)[1:]
    data = tmp_path_factory.mktemp("mesh-data")
    env = {**os.environ, "LIFEOPS_HA_USERS": USER}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifeops_mesh", *args, "--data", str(data), "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip("\n") for line in proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any(ln.startswith("mesh is up") for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "\n".join(lines)
            time.sleep(0.1)
        yield Mesh(proc, lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def _pub(broker: AddonBroker, user: str, password: str, topic: str) -> str:
    """mosquitto_pub (MQTT v5, QoS 1): its stderr, which names a refused publish."""
    return subprocess.run(
        ["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-h", "127.0.0.1", "-p", str(broker.port),
         "-u", user, "-P", password, "-t", topic, "-m", "x"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stderr  # fmt: skip


def test_the_agents_log_in_with_their_own_accounts(addon_broker: AddonBroker, mesh: Mesh) -> None:
    for agent in ("stats", "lifeops", "ha_bridge"):
        assert any(ln.startswith(f"agent {agent}: online") for ln in mesh.lines), mesh.lines
    log = addon_broker.log.read_text()
    for agent in ("stats", "lifeops", "ha_bridge"):
        assert re.search(rf"New client connected .* as lifeops-mesh-{agent}-0 .*u'{agent}'", log)


def test_the_acl_is_active(addon_broker: AddonBroker, mesh: Mesh, tmp_path: Path) -> None:
    """The mesh's accounts have their rights only; the app's `addons` keeps every topic."""
    text = subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "broker", "accounts", "--for", "mosquitto-addon",
         "--credentials", str(_credentials(addon_broker))],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert text == addon_broker.printed  # the passwords are kept: the same text again
    stats = re.search(r'username: stats\n    password: "([^"]+)"', text)
    assert stats
    assert "Not authorized" in _pub(addon_broker, "stats", stats.group(1), "zigbee2mqtt/lamp/set")
    assert _pub(addon_broker, "addons", addon_broker.passwords["addons"], "zigbee2mqtt/x") == ""


def _credentials(broker: AddonBroker) -> Path:
    match = re.search(r"passwords kept in (\S+)", broker.printed)
    assert match
    return Path(match.group(1))


def test_home_assistant_on_the_apps_broker(
    addon_broker: AddonBroker, mesh: Mesh, tmp_path: Path
) -> None:
    """HA as the app's `homeassistant` user: the entities appear, a button press grants XP."""
    ha = HomeAssistantProcess(
        tmp_path / "ha",
        mqtt_port=addon_broker.port,
        mqtt_username="homeassistant",
        mqtt_password=addon_broker.passwords["homeassistant"],
    )
    try:
        ha.start()
        button = f"button.lifeops_{USER}_walk_complete"
        xp = f"sensor.lifeops_{USER}_total_xp"
        # alice's buttons exist from the start (LIFEOPS_HA_USERS); her character sensors come
        # with her first XP
        agent = "binary_sensor.lifeops_mesh_stats"
        states = _wait(ha, lambda s: button in s and s.get(agent, {}).get("state") == "on", 120)
        assert states[button]["state"] != "unavailable"
        ha.call_service("button", "press", {"entity_id": button})
        states = _wait(ha, lambda s: str(s.get(xp, {}).get("state")).isdigit(), 60)
        assert int(states[xp]["state"]) > 0, states[xp]
        assert "Error '" not in ha.log_text()  # no rejected discovery payload
    finally:
        ha.cleanup()


def test_the_lifeops_app_joins_the_same_broker(
    addon_broker: AddonBroker, mesh: Mesh, tmp_path: Path
) -> None:
    """Instead of the mesh elsewhere, the LifeOps Mesh app: its run script gets the `addons`
    account from the Supervisor (a stand-in here, as in test_addon.py), and with the ACL active
    every agent comes online and publishes its discovery config. Runs last: it stops the mesh
    started above first (the same client ids)."""
    mesh.proc.send_signal(signal.SIGINT)
    assert mesh.proc.wait(30) == 0
    service = {**MOSQUITTO_SERVICE, "host": "127.0.0.1", "port": addon_broker.port}
    served = contextlib.ExitStack()
    sup = served.enter_context(
        serving(Supervisor(service={**service, "password": addon_broker.passwords["addons"]}))
    )
    (tmp_path / "options.json").write_text(json.dumps({"users": [USER]}), encoding="utf-8")
    (tmp_path / "data").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SUPERVISOR_API": sup.url,
        "SUPERVISOR_TOKEN": TOKEN,
        "LIFEOPS_ADDON_OPTIONS": str(tmp_path / "options.json"),
        "LIFEOPS_ADDON_DATA": str(tmp_path / "data"),
        "LIFEOPS_ADDON_METRICS_PORT": "0",
        "LIFEOPS_ADDON_EXEC": str(Path(sys.executable).with_name("lifeops-mesh")),
    }
    app = subprocess.Popen(
        [sys.executable, str(RUN_PY)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert app.stdout is not None
        for line in app.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("mesh is up") or len(lines) > 100:
                break
        assert any(ln.startswith("mesh is up") for ln in lines), lines
        for agent in ("stats", "lifeops", "ha_bridge"):
            assert any(ln.startswith(f"agent {agent}: online") for ln in lines), lines
        seen = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(addon_broker.port),
             "-u", "homeassistant", "-P", addon_broker.passwords["homeassistant"],
             "-t", f"homeassistant/button/lifeops_{USER}/+/config", "-F", "%t", "-C", "1",
             "-W", "20"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert seen.stdout.startswith(f"homeassistant/button/lifeops_{USER}/"), seen
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)
        if app.stdout:
            app.stdout.close()
        served.close()


def test_any_other_mosquitto_from_the_written_files(tmp_path: Path) -> None:
    """`--for mosquitto --out DIR`: a Mosquitto that only includes DIR (`include_dir`, as the
    steps say) runs the mesh with `up --credentials`; Home Assistant's account, named by
    --ha-user, reads the discovery configs; a mesh account outside its rights is refused."""
    out, creds = tmp_path / "out", tmp_path / "accounts.toml"
    subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "broker", "accounts", "--for", "mosquitto",
         "--out", str(out), "--ha-user", "hass", "--credentials", str(creds)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"user root\npersistence false\ninclude_dir {out}\nlistener {port} 127.0.0.1\n",
        encoding="utf-8",
    )
    broker = subprocess.Popen(
        [mosquitto_tool("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["mosquitto_sub", "-p", str(port), "-t", "x", "-W", "1"],
                             capture_output=True, text=True, timeout=30).stderr.startswith(
                                 "Error: Connection refused"):  # fmt: skip
            assert broker.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        up = subprocess.run(
            [sys.executable, "-m", "lifeops_mesh", "up", "--broker", f"mqtt://127.0.0.1:{port}",
             "--credentials", str(creds), "--data", str(tmp_path / "data"), "--once",
             "--metrics-port", "0"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        users = tomllib.loads(creds.read_text(encoding="utf-8"))["users"]
        seen = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", "hass",
             "-P", users["hass"], "-t", "homeassistant/binary_sensor/lifeops-mesh/+/config",
             "-F", "%t", "-C", "3", "-W", "10"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert len(seen.stdout.split()) == 3, seen
        stats = _pub_to(port, "stats", users["stats"], "homeassistant/x")
        assert "Not authorized" in stats
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)


def _pub_to(port: int, user: str, password: str, topic: str) -> str:
    return subprocess.run(
        ["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-h", "127.0.0.1", "-p", str(port),
         "-u", user, "-P", password, "-t", topic, "-m", "x"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stderr  # fmt: skip


def _wait(ha: HomeAssistantProcess, ok: Any, within: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        states = ha.states()
        if ok(states):
            return states
        lifeops = {e: s["state"] for e, s in states.items() if "lifeops" in e}
        assert time.monotonic() < deadline, lifeops
        time.sleep(1)
