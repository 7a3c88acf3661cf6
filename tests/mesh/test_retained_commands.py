"""Retained commands never run (#22), through the real broker with the project's config.

A request or event published with the retain flag would be executed again by every new
session. The agents subscribe with "retain as published", so one published while the agent runs
reaches it with its flag, like one stored before it started: both are dead-lettered as
`retained_command` and grant nothing, whether `mosquitto_pub -r` or paho (as Home Assistant's
`mqtt.publish` with `retain: true`) sent them. Retained states keep working: see the state
subscriptions of ha_bridge and LifeOps in their own tests, which now get live retained sheets
with the flag set.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mesh import Agent
from mesh.broker.process import MosquittoProcess
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from mesh.transport import Inbound
from tests.conftest import StartAgent, user

CASES = {  # agent: (topic, account, body of a valid command for user `uid`)
    "stats": ("stats/activities/log", "tester"),
    "lifeops": ("lifeops/timeline/complete", "homeassistant"),
}


def _body(agent: str, uid: str) -> bytes:
    if agent == "stats":
        return json.dumps(
            {"user_id": uid, "activity_type": "gym_session", "source_ref": uid}
        ).encode()
    return json.dumps({"user_id": uid, "item_code": "morning_stretch"}).encode()


def _paho_retained(broker: MosquittoProcess, account: str, topic: str, body: bytes) -> None:
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"paho-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv5,
    )
    c.username_pw_set(account, broker.credentials[account])
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.publish(topic, body, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


async def _publish_retained(
    how: str, broker: MosquittoProcess, account: str, topic: str, body: bytes
) -> None:
    if how == "mosquitto_pub":
        sent = await MosquittoCli(broker, account).pub(topic, body, retain=True)
        assert sent.returncode == 0, sent.stderr
    else:
        await asyncio.to_thread(_paho_retained, broker, account, topic, body)


async def _granted(agent: Agent, uid: str) -> bool:
    table, column = (
        ("stats_characters", "user_id")
        if agent.name == "stats"
        else ("lifeops_completions", "user_id")
    )
    async with agent.store.transaction() as tx:
        return await tx.fetchone(f"SELECT 1 FROM {table} WHERE {column} = ?", uid) is not None


@pytest.mark.parametrize("how", ["mosquitto_pub", "paho"])
@pytest.mark.parametrize("when", ["live", "stored"])
@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_retained_command_is_dead_lettered_live_or_stored(
    name: str,
    when: str,
    how: str,
    broker: MosquittoProcess,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    topic, account = CASES[name]
    uid = user()
    body = _body(name, uid)
    cleaner = MosquittoCli(broker, account)
    try:
        if when == "stored":
            await _publish_retained(how, broker, account, topic, body)
        async with (
            Recorder(broker, [f"mesh/dlq/{name}"]) as rec,
            start_agent(name, broker, f"sqlite:///{tmp_path / 'r.db'}") as agent,
        ):
            if when == "live":
                await _publish_retained(how, broker, account, topic, body)

            async def dead() -> list[Inbound]:
                return [m for m in rec.on(f"mesh/dlq/{name}") if uid.encode() in m.payload]

            (msg,) = await eventually(dead, what="the retained command's dead letter")
            record = json.loads(msg.payload)
            assert record["error"]["code"] == "retained_command", record
            assert record["topic"] == topic
            await asyncio.sleep(0.5)  # nothing else follows: no grant, no second dead letter
            assert len(await dead()) == 1
            assert not await _granted(agent, uid)
    finally:
        await cleaner.pub(topic, None, retain=True)
