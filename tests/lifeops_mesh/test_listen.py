"""`lifeops-mesh up --listen`: the embedded broker reached from another machine's network.

The "other machine" is a network namespace the test makes (`ip netns add` and a veth pair, as
root; removed afterwards): a client there reaches the host only through the veth link, never
through 127.0.0.1. It uses the Home Assistant settings `up` prints (address, port, the
`homeassistant` account and the file its password is in) and sees the mesh's retained discovery
configs; a client without an account, or with a wrong password, is refused.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeops_mesh import registry
from mesh.broker.process import free_port

IP = shutil.which("ip") or "/usr/sbin/ip"


@dataclass(frozen=True)
class Namespace:
    name: str
    host_address: str  # the host's end of the veth link
    inside_address: str

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [IP, "netns", "exec", self.name, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    if os.geteuid() != 0 or not Path(IP).exists():
        pytest.fail("needs root and iproute2 (apt-get install iproute2) for a network namespace")
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    name, host_if, ns_if = f"lifeops-l{tag}", f"lol{tag}h", f"lol{tag}n"
    taken = subprocess.run([IP, "-o", "-4", "addr"], capture_output=True, text=True).stdout
    subnet = next(
        f"10.213.{n}" for n in random.sample(range(1, 250), 249) if f" 10.213.{n}." not in taken
    )
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{subnet}.1/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for cmd in (
            ("addr", "add", f"{subnet}.2/24", "dev", ns_if),
            ("link", "set", ns_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", name, IP, *cmd)
        yield Namespace(name, f"{subnet}.1", f"{subnet}.2")
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run([IP, "link", "del", host_if], capture_output=True, timeout=30)


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: list[str]

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def setting(self, name: str) -> str:
        match = re.search(rf"^  {name}: (.+)$", self.out, re.M)
        assert match, f"no {name} in:\n{self.out}"
        return match.group(1)


StartUp = Callable[..., Up]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    started: list[Up] = []

    def start(*args: str) -> Up:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lifeops_mesh", "up", "--data", str(tmp_path / "data"),
             "--metrics-port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        up = Up(proc, [])
        started.append(up)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                up.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 90
        while not any(ln.startswith("mesh is up") for ln in up.lines):
            assert proc.poll() is None and time.monotonic() < deadline, up.out
            time.sleep(0.1)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            try:
                up.proc.wait(30)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait(10)
        assert up.proc.stdout is not None
        up.proc.stdout.close()


def _sub(ns: Namespace, host: str, port: str, *auth: str) -> subprocess.CompletedProcess[str]:
    """mosquitto_sub from inside the namespace: the agents' retained discovery configs."""
    topic = "homeassistant/binary_sensor/lifeops-mesh/+/config"
    return ns.run(
        "mosquitto_sub", "-V", "mqttv5", "-h", host, "-p", port, *auth, "-t", topic,
        "-F", "%t", "-C", str(len(registry.names())), "-W", "10",
    )  # fmt: skip


def _password(up: Up) -> str:
    where = up.setting("Password")
    match = re.fullmatch(r"the `homeassistant` line of (\S+)", where)
    assert match, where
    return str(tomllib.loads(Path(match.group(1)).read_text())["users"]["homeassistant"])


def _reached_with_the_printed_settings(up: Up, ns: Namespace, host: str) -> None:
    port = up.setting("Port")
    assert up.setting("Username") == "homeassistant"
    details = re.search(r"\(details: (\S+)\)", up.out)
    assert details and Path(details.group(1)).is_file(), up.out
    got = _sub(ns, host, port, "-u", "homeassistant", "-P", _password(up))
    assert got.returncode == 0, got.stdout + got.stderr
    assert sorted(got.stdout.split()) == sorted(
        f"homeassistant/binary_sensor/lifeops-mesh/{a}/config" for a in registry.names()
    )
    anonymous = _sub(ns, host, port)
    assert anonymous.returncode != 0 and "Not authorized" in anonymous.stderr, anonymous
    wrong = _sub(ns, host, port, "-u", "homeassistant", "-P", "wrong")
    assert wrong.returncode != 0 and "Not authorized" in wrong.stderr, wrong


def test_listen_on_an_address_of_this_machine(
    netns: Namespace, start_up: StartUp, tmp_path: Path
) -> None:
    """--listen ADDRESS: the printed broker is that address; reached from the namespace with
    the printed settings, anonymous refused; not on 127.0.0.1; the local tools find it."""
    port = str(free_port())
    up = start_up("--listen", netns.host_address, "--port", port)
    assert up.setting("Broker") == netns.host_address and up.setting("Port") == port
    _reached_with_the_printed_settings(up, netns, up.setting("Broker"))
    refused = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", "x", "-W", "2"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Connection refused" in refused.stderr, refused  # only the address it was given
    request = subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "request", "--data", str(tmp_path / "data"),
         "activities_log", '{"user_id":"alice","activity_type":"reading"}'],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert request.returncode == 0 and '"success":true' in request.stdout, request


def test_listen_on_every_interface(netns: Namespace, start_up: StartUp) -> None:
    """--listen 0.0.0.0: the printed broker is an address of this machine other than loopback
    (the one of its default route), and every address reaches the broker."""
    port = str(free_port())
    up = start_up("--listen", "0.0.0.0", "--port", port)
    printed = up.setting("Broker")
    addresses = subprocess.run(
        [IP, "-o", "-4", "addr"], capture_output=True, text=True, timeout=30
    ).stdout
    assert not printed.startswith("127.") and f" {printed}/" in addresses, (printed, addresses)
    _reached_with_the_printed_settings(up, netns, netns.host_address)


def test_default_is_this_machine_only(start_up: StartUp) -> None:
    """Without --listen the broker is on 127.0.0.1, and `up` says how to open it."""
    up = start_up("--port", str(free_port()))
    assert up.setting("Broker") == "127.0.0.1"
    assert "restart with --listen 0.0.0.0" in up.out
