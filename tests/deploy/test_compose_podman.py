"""compose.yaml run for real under rootful podman (tests/deploy/podman_stack.py says how, and
which stand-ins replace the images compose.yaml names): the stack comes up in compose's order
with every health check passing, agents online, requests answered on the published (moved)
port, every Prometheus target up, the `test` profile's test-runner passing, `--profile scale`
sharing the load, data kept across `down`/`up`; everything removed at the end.

The tests share one stack and run in file order. scripts/test.sh installs what they need
(`ensure_compose_tools`: podman, iptables, netavark, aardvark-dns, runc, debootstrap; podman-compose
comes with the `test` extra).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import ActivityLogRequest, CharacterGetRequest
from mesh import MeshClient
from tests.deploy.podman_stack import Stack, build_agent_image, ensure_standins, podman

pytestmark = pytest.mark.timeout(1800)  # a cold start builds the stand-in images (minutes)
ALL_PROFILES = ("scale", "test", "cli")
USER = "compose-test-alice"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for tool in ("podman", "debootstrap", "iptables", "runc", "netavark", "aardvark-dns"):
        if not any(
            os.path.exists(f"{d}/{tool}") for d in ("/usr/bin", "/usr/sbin", "/usr/lib/podman")
        ):
            pytest.fail(
                f"{tool} is not installed: scripts/test.sh installs it (ensure_compose_tools)"
            )
    if os.geteuid() != 0:
        pytest.fail("the compose test needs rootful podman: run it as root")
    started = time.monotonic()
    standins = ensure_standins()
    build_agent_image()
    print(f"images ready in {time.monotonic() - started:.0f} s (stand-ins {standins})")
    s = Stack(f"lifeops-ct-{os.getpid()}")
    try:
        s.up(s.order())
        yield s
    finally:
        s.compose("down", "-v", profiles=ALL_PROFILES)
        left = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={s.project}")
        vols = [v for v in podman("volume", "ls", "-q").split() if v.startswith(f"{s.project}_")]
        nets = [n for n in podman("network", "ls", "-q").split() if n.startswith(s.project)]
        assert not left.split() and not vols and not nets, f"left: {left.split()} {vols} {nets}"


def broker_url_as_tester(s: Stack) -> str:
    creds = tomllib.loads(s.volume_file("account-tester", "credentials.toml").read_text())
    return f"mqtt://tester:{creds['users']['tester']}@127.0.0.1:{s.ports['LIFEOPS_MQTT_PORT']}"


def request(s: Stack, key: str, payload: Any) -> Any:
    async def go() -> Any:
        async with MeshClient(broker_url_as_tester(s), contract()) as client:
            return await client.request(key, payload)

    return asyncio.run(go())


def gym(n: int) -> ActivityLogRequest:
    return ActivityLogRequest(
        user_id=USER, activity_type="gym_session", source="manual", source_ref=f"gym-{n}"
    )


def test_stack_is_up_in_order_healthy_and_least_privileged(stack: Stack) -> None:
    """Every service of the default stack runs and passes its health check (Stack.up waited
    for each in depends_on order); agents run as uid 10001; the broker's ACL and password file
    are 0600 and its own (what Mosquitto 2.0.19+ demands); the `cli` recipe reports every agent
    online with no password on its command line."""
    expected = set(stack.order()) - {"broker-accounts"}
    for name in expected:
        state = podman("inspect", "--format", "{{.State.Status}}", stack.container(name))
        assert state.strip() == "running", name
    for agent in ("stats", "lifeops", "ha-bridge"):
        assert stack.exec(agent, "id", "-u").strip() == "10001", agent
    for f in ("acl", "passwd"):
        mode = stack.exec("mosquitto", "stat", "-c", "%a %u:%g", f"/mosquitto/secrets/{f}")
        assert mode.split() == ["600", "1883:1883"], f
    out = stack.compose("run", "--rm", "--no-deps", "cli", "health", profiles=("cli",))
    for agent in ("stats", "lifeops", "ha_bridge"):
        assert re.search(rf"^{agent}\s+online\s+healthy", out, re.M), out


def test_a_request_is_answered_on_the_moved_port(stack: Stack) -> None:
    """The broker is published on LIFEOPS_MQTT_PORT (a free port, not 1883): a request from
    the host is answered, its repeat is recognised."""
    assert stack.ports["LIFEOPS_MQTT_PORT"] != 1883
    first = request(stack, "activities_log", gym(1))
    assert first.success and first.xp_granted == {"STR": 50, "STA": 20}, first
    again = request(stack, "activities_log", gym(1))
    assert again.duplicate and again.activity_id == first.activity_id


def prometheus_api(s: Stack, path: str) -> Any:
    port = s.ports["LIFEOPS_PROMETHEUS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5) as r:
        return json.load(r)["data"]


def prometheus_targets(s: Stack) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = prometheus_api(s, "targets")["activeTargets"]
    return targets


def wait_targets_up(s: Stack, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        targets = prometheus_targets(s)
        if len(targets) == count and all(t["health"] == "up" for t in targets):
            return targets
        if time.monotonic() > deadline:
            raise AssertionError(f"targets not all up: {targets}")
        time.sleep(2)


def test_every_prometheus_target_is_up(stack: Stack) -> None:
    """The default stack has exactly its three agents as targets, all up (no `scale`
    instance is scraped while it does not run)."""
    targets = wait_targets_up(stack, 3)
    assert sorted(t["labels"]["agent"] for t in targets) == ["ha_bridge", "lifeops", "stats"]
    # the alert rules are loaded, and the one on `up` sees no agent down (pending or firing)
    deadline = time.monotonic() + 60
    while True:  # evaluated at least once (every 15 s)
        rules = [r for g in prometheus_api(stack, "rules")["groups"] for r in g["rules"]]
        down = [r for r in rules if r["name"] == "MeshAgentDown"]
        if not down or down[0]["health"] != "unknown" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert down and down[0]["health"] == "ok" and not down[0]["alerts"], down


def test_the_test_profile_runner_passes(stack: Stack) -> None:
    """`--profile test run --rm test-runner`: the black-box checks pass against the stack."""
    out = stack.compose("run", "--rm", "--no-deps", "test-runner", profiles=("test",))
    assert "round trip activities_log" in out and "a completion reaches Stats" in out, out
    assert "doctor's live review" in out and out.rstrip().endswith("passed"), out


def received(s: Stack, service: str) -> float:
    """mesh_messages_received_total for activities_log in one Stats container."""
    script = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9181/metrics', timeout=5).read().decode())"
    )
    text = s.exec(service, "python", "-c", script)
    m = re.search(r'^mesh_messages_received_total\{key="activities_log"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_scale_profile_shares_the_load(stack: Stack) -> None:
    """`--profile scale` adds two Stats instances on the shared subscription: each takes part
    of 60 requests, all answered; Prometheus finds all three by DNS, all up."""
    order = stack.order(("scale",))
    assert order.index("stats") < order.index("stats-2") and "stats-2" not in stack.order()
    stack.up(["stats-2", "stats-3"], profiles=("scale",))
    before = {n: received(stack, n) for n in ("stats", "stats-2", "stats-3")}

    async def go() -> list[Any]:
        async with MeshClient(broker_url_as_tester(stack), contract()) as client:
            return list(
                await asyncio.gather(
                    *(client.request("activities_log", gym(n)) for n in range(100, 160))
                )
            )

    replies = asyncio.run(go())
    assert all(r.success and not r.duplicate for r in replies)
    taken = {n: received(stack, n) - before[n] for n in before}
    assert all(v > 0 for v in taken.values()), taken
    assert sum(taken.values()) >= 60, taken
    wait_targets_up(stack, 5)


def test_down_and_up_keeps_the_data(stack: Stack) -> None:
    """`down` (without -v) and `up` again: the character and the deduplication survive."""
    sheet = request(stack, "character_get", CharacterGetRequest(user_id=USER))
    assert sheet.success and sheet.character.activities == 61, sheet
    stack.compose("down", profiles=ALL_PROFILES)
    assert not podman(
        "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={stack.project}"
    ).split()
    stack.up(stack.order())
    again = request(stack, "character_get", CharacterGetRequest(user_id=USER))
    assert again.character.total_xp == sheet.character.total_xp, again
    assert request(stack, "activities_log", gym(1)).duplicate
