"""The operator toolbox on a running mesh: tail, request, health, dlq, trace, demo, AsyncAPI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract import contract as default_contract
from lifeops_mesh.tools.asyncapi import generate
from mesh.broker.process import MosquittoProcess

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "asyncapi"
Start = Callable[..., Any]


async def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeops_mesh",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def mesh(
    broker: MosquittoProcess, tmp_path: Path, start_agent: Start
) -> AsyncIterator[dict[str, Any]]:
    """Stats and LifeOps on SQLite, logging JSON into one file, as `up` runs them."""
    import logging

    from mesh.logs import JsonFormatter

    log_file = tmp_path / "mesh.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonFormatter("mesh"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    stats_db = f"sqlite:///{tmp_path / 'stats.db'}"
    try:
        async with (
            start_agent("stats", broker, stats_db),
            start_agent("lifeops", broker, f"sqlite:///{tmp_path / 'lifeops.db'}"),
        ):
            yield {"url": broker.url("tester"), "log": log_file, "stats_db": stats_db}
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)


async def test_request_and_trace_show_the_whole_path(mesh: dict[str, Any]) -> None:
    """`request` prints the reply and its trace id; `trace` then shows LifeOps and Stats."""
    from tests.conftest import user

    uid = user()
    rc, out, err = await cli(
        "request",
        "timeline_complete",
        json.dumps({"user_id": uid, "item_code": "reading"}),
        "--broker",
        mesh["url"],
    )
    assert rc == 0, err
    reply = json.loads(out)
    assert reply["success"] and reply["xp_granted"] == {"INT": 30}
    trace_id = err.split("trace ")[1].split()[0]
    await asyncio.sleep(0.3)
    rc, out, err = await cli("trace", trace_id, "--log", str(mesh["log"]))
    assert rc == 0, err
    assert "lifeops" in out and "timeline_complete" in out
    assert "stats" in out and "activity_completed" in out
    rc, out, err = await cli("trace", "0" * 32, "--log", str(mesh["log"]))
    assert rc == 1 and out == "" and f"no log line of trace {'0' * 32}" in err
    rc, out, err = await cli(
        "request", "activities_log", '{"user_id": "x"}', "--broker", mesh["url"]
    )
    assert rc == 2 and "activity_type" in err


async def test_the_same_request_command_again_is_a_retry(mesh: dict[str, Any]) -> None:
    """The keyless `request` example of docs/commands.md run twice (as after a timeout, see
    docs/reliability.md) grants its XP once; the second reply is the first, marked duplicate."""
    from tests.conftest import user

    body = json.dumps({"user_id": user(), "activity_type": "reading"})
    args = ("request", "activities_log", body, "--broker", mesh["url"])
    first = await cli(*args)
    again = await cli(*args)
    assert first[0] == 0 and again[0] == 0, (first, again)
    one, two = json.loads(first[1]), json.loads(again[1])
    assert one["xp_granted"] == {"INT": 30} and not one["duplicate"]
    assert two["duplicate"] and two["activity_id"] == one["activity_id"]


async def test_request_lists_its_keys_and_a_wrong_password_is_one_line(
    mesh: dict[str, Any],
) -> None:
    """`request --list` names every request key; a wrong password is one line that says where
    the passwords are, with no gmqtt internals and no trace id of a request never sent."""
    rc, out, err = await cli("request", "--list")
    assert rc == 0, err
    keys = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert keys["activities_log"] == "stats/activities/log"
    assert keys["timeline_complete"] == "lifeops/timeline/complete"
    assert "character_state" not in keys  # a state topic, not a request
    bad = mesh["url"].replace("tester:", "tester:wrong", 1)
    body = '{"user_id": "u", "activity_type": "reading"}'
    for args in (("request", "activities_log", body), ("health",)):
        rc, out, err = await cli(*args, "--broker", bad)
        assert rc == 2 and out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "refused user 'tester': wrong user name or password" in err
        assert "credentials.toml" in err and "CONNACK" not in err and "trace" not in err


async def test_tail_shows_traffic_with_contract_keys(mesh: dict[str, Any]) -> None:
    """`tail` prints topic, contract key, trace id and the decoded payload as it flows."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeops_mesh",
        "tail",
        "stats/#",
        "--broker",
        mesh["url"],
        "--timeout",
        "6",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2)
    rc, _, err = await cli(
        "request",
        "activities_log",
        '{"user_id": "tailuser", "activity_type": "gym_session"}',
        "--broker",
        mesh["url"],
    )
    assert rc == 0, err
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    assert "stats/activities/log [activities_log] trace=" in text
    assert '"activity_type":"gym_session"' in text
    assert "stats/character/tailuser [character_state]" in text


async def test_health_lists_agents_and_broker_figures(mesh: dict[str, Any]) -> None:
    """`health` shows each agent online and healthy, and exits 0."""
    await asyncio.sleep(0.5)
    rc, out, err = await cli("health", "--broker", mesh["url"], "--json")
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["agents"]["stats"] == "online" and report["agents"]["lifeops"] == "online"
    assert report["health"]["lifeops"]["checks"]["stats"]["ok"] is True
    assert "version" in report["broker"]
    # Never a bare "-": the broker's figure, an agent's last view of it, or why there is none.
    dropped = report["broker"]["messages dropped (queue limits)"]
    assert dropped.split()[0].isdigit() or "only on change" in dropped, dropped


async def test_dlq_list_and_replay_a_fixed_message(
    mesh: dict[str, Any], broker: MosquittoProcess
) -> None:
    """A bad message shows up in `dlq list`; `dlq replay --payload` sends a fixed one."""
    from mesh.testing.recorder import Recorder
    from mesh.transport import Transport

    async with Recorder(broker, []) as rec:
        t: Transport = rec.transport
        await t.publish("stats/activities/log", b'{"user_id": "dl", "activity_type": "juggling"}')
    await asyncio.sleep(0.5)
    rc, out, _ = await cli("dlq", "list", "--db", mesh["stats_db"])
    assert rc == 0 and "unknown_activity_type" in out and '"juggling"' in out
    dead_id = out.split()[0]
    fixed = json.dumps({"user_id": "dl", "activity_type": "reading"})
    rc, out, err = await cli(
        "dlq",
        "replay",
        dead_id,
        "--db",
        mesh["stats_db"],
        "--payload",
        fixed,
        "--broker",
        mesh["url"],
    )
    assert rc == 0, err
    assert json.loads(out)["xp_granted"] == {"INT": 30}
    rc, out, _ = await cli("dlq", "list", "--db", mesh["stats_db"])
    assert out.strip() == "no dead letters"


async def test_demo_pushes_a_week_through_the_mesh(mesh: dict[str, Any]) -> None:
    """`demo` completes a few days for two users and prints level-ups and achievements."""
    rc, out, err = await cli("demo", "--broker", mesh["url"], "--days", "3", timeout=120)
    assert rc == 0, err
    assert "completions accepted" in out
    assert "LEVEL UP" in out and "ACHIEVEMENT" in out
    assert "ada: level" in out and "ben: level" in out


def _asyncapi_parser() -> Path:
    """The official parser from npm, installed once into .tools/ (gitignored)."""
    if not (TOOLS / "node_modules" / "@asyncapi" / "parser").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise pytest.UsageError("npm not found: install the Debian packages nodejs and npm")
        TOOLS.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(TOOLS),
                "@asyncapi/parser@3",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
    return TOOLS / "node_modules"


def test_asyncapi_document_is_valid(tmp_path: Path) -> None:
    """`contract asyncapi` output passes @asyncapi/parser with no error."""
    modules = _asyncapi_parser()
    doc = tmp_path / "asyncapi.json"
    r = subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "contract", "asyncapi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc.write_text(r.stdout)
    assert json.loads(r.stdout) == json.loads(json.dumps(generate(default_contract())))
    v = subprocess.run(
        ["node", str(ROOT / "tests" / "support" / "validate_asyncapi.cjs"), str(doc)],
        env={**os.environ, "NODE_PATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"valid: {len(default_contract().topics)} channels" in v.stdout
    ops = json.loads(r.stdout)["operations"]
    assert ops["activities_log"]["reply"]["address"]["location"] == (
        "$message.header#/responseTopic"
    )
    assert ops["character_state"]["bindings"]["mqtt"] == {
        "qos": 1,
        "retain": True,
        "bindingVersion": "0.2.0",
    }
