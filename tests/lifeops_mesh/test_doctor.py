"""`lifeops-mesh doctor`: a healthy mesh is clean; each planted fault shows up in its row."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lifeops_contract import contract
from lifeops_mesh.broker import local_broker
from lifeops_mesh.tools.doctor.report import Report
from lifeops_mesh.tools.doctor.static import dedup_keys, dedup_problem
from mesh import Context, Route, TopicEntry
from mesh.testing.brokers import transport_for
from mesh.transport import Transport

ROOT = Path(__file__).resolve().parents[2]
Start = Callable[..., Any]


async def doctor(*args: str, during: Callable[[], Any] | None = None) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeops_mesh",
        "doctor",
        "--json",
        *args,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if during is not None:
        await asyncio.sleep(2.0)
        await during()
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()
    return proc.returncode or 0, json.loads(out)


def issues(report: dict[str, Any]) -> list[str]:
    return [f"{i['service']}: {i['issue']}" for i in report["issues"]]


@pytest.fixture
async def rig(tmp_path: Path, start_agent: Start) -> AsyncIterator[dict[str, Any]]:
    """A broker with an extra `rogue` account (may publish anything), Stats and LifeOps."""
    broker = local_broker(
        tmp_path / "broker", extra_acl="user rogue\ntopic readwrite #\n", extra_accounts=("rogue",)
    )
    broker.start()
    rogue = transport_for(broker, "rogue")
    await rogue.connect()
    try:
        async with (
            start_agent("stats", broker, f"sqlite:///{tmp_path / 's.db'}") as stats,
            start_agent("lifeops", broker, f"sqlite:///{tmp_path / 'l.db'}"),
        ):
            yield {"broker": broker, "rogue": rogue, "stats": stats, "url": broker.url("doctor")}
    finally:
        await rogue.disconnect()
        broker.stop()


async def test_healthy_mesh_gives_a_clean_report(rig: dict[str, Any]) -> None:
    """Static and live checks pass: no issues, every box ticked, exit 0."""
    rc, report = await doctor("--watch", "3s", "--broker", rig["url"])
    assert rc == 0, issues(report)
    assert report["issues"] == []
    assert all(c["ok"] for c in report["checklist"]), report["checklist"]
    assert "stats/activities/log" in report["flow"]
    assert any("stats/activities/log" in c["integration_point"] for c in report["coverage"])


async def test_live_faults_show_up_in_their_rows(rig: dict[str, Any]) -> None:
    """An agent down, a rogue topic, a malformed payload, an unanswered request and a stale
    retained discovery config: each is a row, and the exit code is non-zero. A user whose Oura
    sync fails is named with what it means."""
    rogue: Transport = rig["rogue"]
    lapsed = b'{"user_id": "bob", "state": "membership", "reason": "renew the membership"}'
    await rogue.publish("lifeops/oura/status/bob", lapsed, retain=True)
    await rogue.publish(
        "homeassistant/sensor/lifeops_ghost/config", b'{"name": "ghost"}', retain=True
    )
    await rig["stats"].stop()  # retained stats/status = offline

    async def plant() -> None:
        await rogue.publish("rogue/undeclared", b"hello")
        await rogue.publish("stats/activities/log", b'{"user_id": ')
        await rogue.publish(
            "stats/character/get",
            b'{"user_id": "x"}',
            response_topic="reply/tester/doc",
            correlation_data=b"c1",
        )

    rc, report = await doctor("--watch", "8s", "--broker", rig["url"], during=plant)
    found = "\n".join(issues(report))
    assert rc == 1
    assert "stats: agent offline" in found
    assert "traffic on undeclared topic rogue/undeclared" in found
    assert "payload on stats/activities/log fails its schema" in found
    assert "requests on stats/character/get got no reply" in found
    assert "stale retained message on homeassistant/sensor/lifeops_ghost/config" in found
    assert "lifeops: Oura sync of bob: membership" in found
    (oura,) = [i for i in report["issues"] if "Oura sync of bob" in i["issue"]]
    assert oura["fix"] == "renew the membership"
    md = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeops_mesh",
        "doctor",
        "--watch",
        "1s",
        "--broker",
        rig["url"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    text = (await md.communicate())[0].decode()
    assert "## Issues Found" in text and "| stats | agent offline |" in text


async def test_static_faults_show_up_in_their_rows(tmp_path: Path) -> None:
    """A request topic without a responder, and a compose service without a health check."""
    contract = (
        (ROOT / "topics.toml").read_text()
        + """
[topics.orphan_request]
topic = "stats/orphan/ask"
kind = "request"
schema = "CharacterGetRequest"
reply_schema = "CharacterReply"
timeout_s = 5.0
publishers = ["tester"]
subscribers = ["stats"]
description = "Nobody answers this."
example = '{"user_id": "x"}'
"""
    )
    (tmp_path / "topics.toml").write_text(contract)
    compose = (
        (ROOT / "compose.yaml")
        .read_text()
        .replace(
            '    healthcheck:\n      test: ["CMD-SHELL", "nc -z 127.0.0.1 1883"]\n'
            "      interval: 5s\n      timeout: 3s\n      retries: 12\n",
            "",
            1,
        )
    )
    assert compose != (ROOT / "compose.yaml").read_text()
    (tmp_path / "compose.yaml").write_text(compose)
    rc, report = await doctor(
        "--contract", str(tmp_path / "topics.toml"), "--compose", str(tmp_path / "compose.yaml")
    )
    found = "\n".join(issues(report))
    assert rc == 1
    assert "request topic stats/orphan/ask has no responder" in found
    assert "mosquitto: no health check" in found
    assert any("mosquitto" in u and "healthcheck" in u for u in report["compose_updates"])
    box = {c["check"]: c["ok"] for c in report["checklist"]}
    assert box["every request topic has a responder"] is False
    assert box["compose: every service has a health check"] is False


def test_dedup_row_parses_the_expression_and_finds_routes_keying_alone() -> None:
    """The dedup row reads each routed entry's expression: a field its payload lacks, a route
    building its own keys, an event claiming nothing are each a finding; the shipped contract
    and agents give none."""
    the_contract = contract()
    levelup = the_contract.entry("levelup")

    async def handler(ctx: Context, payload: Any) -> None:
        return None

    def variant(dedup: str) -> TopicEntry:
        entry = msgspec.structs.replace(levelup, dedup=dedup)
        entry.__dict__["_schema_type"] = levelup.schema_type
        return entry

    assert dedup_problem(levelup, Route("levelup", handler)) is None
    own = dedup_problem(levelup, Route("levelup", handler, dedup=lambda e: e.event_id))
    assert own is not None and "builds its own dedup keys" in own[0]
    field = dedup_problem(variant("event_id+when"), Route("levelup", handler))
    assert field is not None and "LevelUp has no field 'when'" in field[0]
    syntax = dedup_problem(variant("event_id+"), Route("levelup", handler))
    assert syntax is not None and "'' is no payload field" in syntax[0]
    none = dedup_problem(variant("none"), Route("levelup", handler))
    assert none is not None and "changes state without a dedup key" in none[0]

    report = Report(generated_at=dt.datetime.now(dt.UTC), flow="")
    dedup_keys(the_contract, report, {"ha_bridge": {"levelup": Route("levelup", handler)}})
    assert [(c.ok, c.why) for c in report.checklist] == [
        (True, "inbox keys from topics.toml: levelup event_id")
    ]
    report = Report(generated_at=dt.datetime.now(dt.UTC), flow="")
    own_keys = {"levelup": Route("levelup", handler, dedup=str)}
    dedup_keys(the_contract, report, {"ha_bridge": own_keys})
    assert [(c.ok, c.why) for c in report.checklist] == [(False, "levelup")]
