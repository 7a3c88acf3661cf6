"""The runtime driven by independent clients: paho-mqtt and the real mosquitto_* CLIs."""

from __future__ import annotations

import asyncio
import json
import queue
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mesh.agent import Agent
from mesh.broker.process import MosquittoProcess
from mesh.client import plain_transport
from mesh.errors import PublishRefused, TransportError
from mesh.testing.brokers import connect_as
from mesh.testing.mqtt_cli import MosquittoCli
from tests.conftest import user


def _paho(
    broker: MosquittoProcess, account: str
) -> tuple[paho.Client, queue.Queue[paho.MQTTMessage]]:
    inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"paho-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv5,
    )
    c.username_pw_set(account, broker.credentials[account])
    c.on_message = lambda _c, _u, msg: inbox.put(msg)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c, inbox


def _request(c: paho.Client, topic: str, body: bytes, response_topic: str, cid: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho's own
    props.ResponseTopic = response_topic
    props.CorrelationData = cid
    c.publish(topic, body, qos=1, properties=props).wait_for_publish(5)


async def _get(q: queue.Queue[paho.MQTTMessage], timeout: float = 10) -> paho.MQTTMessage:
    return await asyncio.to_thread(q.get, True, timeout)


async def test_paho_request_response_and_error_reply(
    stats: Agent, broker: MosquittoProcess
) -> None:
    """A paho-mqtt v5 requester gets a reply with its correlation data; errors too."""
    c, inbox = _paho(broker, "tester")
    try:
        r = c.subscribe("reply/tester/+", qos=1)
        assert r[0] == paho.MQTT_ERR_SUCCESS
        await asyncio.sleep(0.2)
        uid = user()
        body = json.dumps(
            {"user_id": uid, "activity_type": "gym_session", "transaction": "t-1"}
        ).encode()
        _request(c, "stats/activities/log", body, "reply/tester/paho", b"corr-1")
        msg = await _get(inbox)
        assert getattr(msg.properties, "CorrelationData", None) == b"corr-1"
        reply = json.loads(msg.payload)
        assert reply["success"] is True and reply["xp_granted"] == {"STR": 50, "STA": 20}
        assert reply["transaction"] == "t-1"
        _request(
            c,
            "stats/character/get",
            json.dumps({"user_id": "nobody-" + uid}).encode(),
            "reply/tester/paho",
            b"corr-2",
        )
        msg = await _get(inbox)
        err = json.loads(msg.payload)
        assert getattr(msg.properties, "CorrelationData", None) == b"corr-2"
        assert err["success"] is False and err["error"]["code"] == "not_found"
        assert "nobody-" in err["error"]["message"]
    finally:
        c.loop_stop()
        c.disconnect()


async def test_bad_json_from_mosquitto_pub_reaches_the_dead_letter_topic(
    stats: Agent, broker: MosquittoProcess
) -> None:
    """mosquitto_pub of broken JSON: mosquitto_sub sees a dead-letter record naming the problem."""
    cli = MosquittoCli(broker)
    sub = await cli.sub("mesh/dlq/stats", count=1, wait_s=10)
    pub = await cli.pub("stats/activities/log", '{"user_id": "alice", ')
    assert pub.returncode == 0, pub.stderr
    got = await sub.result()
    assert got.returncode == 0, got.stderr
    out = got.stdout
    record = json.loads(out)
    assert record["agent"] == "stats"
    assert record["topic"] == "stats/activities/log"
    assert record["payload"] == '{"user_id": "alice", '
    assert record["error"]["code"] == "invalid_json"
    assert record["received_at"]


async def test_mosquitto_rr_missing_field_names_the_field(
    stats: Agent, broker: MosquittoProcess
) -> None:
    """A request missing a required field is answered with an error that names it."""
    rr = await MosquittoCli(broker).rr(
        "stats/activities/log", '{"user_id": "alice"}', response_topic="reply/tester/rr2"
    )
    out = rr.stdout
    reply = json.loads(out)
    assert reply["success"] is False
    assert reply["error"]["code"] == "validation_error"
    assert "activity_type" in reply["error"]["message"]


def test_anonymous_and_wrong_password_are_refused(broker: MosquittoProcess) -> None:
    """allow_anonymous false: no account, or a wrong password, cannot connect."""
    for user_pw in (None, ("tester", "wrong")):
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if user_pw:
            c.username_pw_set(*user_pw)
        rc = c.connect("127.0.0.1", broker.port)
        assert rc == 0
        result: list[ReasonCode] = []
        c.on_connect = lambda _c, _u, _f, reason, _p, result=result: result.append(reason)
        deadline = 50
        while not result and deadline:
            c.loop(0.1)
            deadline -= 1
        assert result and result[0].is_failure, f"{user_pw} connected"
        c.disconnect()


async def test_publish_outside_the_acl_is_refused_with_135(broker: MosquittoProcess) -> None:
    """The stats account may not publish completions: MQTT v5 PUBACK reason 135 raises."""
    t = await connect_as(broker, "stats", prefix="acl")
    try:
        with pytest.raises(PublishRefused) as err:
            await t.publish("lifeops/activity/completed", b"{}")
        assert err.value.reason_code == 135
        await t.publish("stats/status", b"online", retain=True)  # its own: allowed
    finally:
        await t.disconnect()


async def test_transport_bounds_in_flight_publishes(broker: MosquittoProcess) -> None:
    """Thousands of concurrent QoS 1 publishes never overflow the broker's receive maximum."""
    t = await connect_as(broker, "stats", prefix="win")
    try:
        await asyncio.gather(
            *(t.publish("stats/character/window-test", b"{}") for _ in range(3000))
        )
    finally:
        await t.disconnect()


async def test_connect_to_nothing_fails_clearly() -> None:
    """No broker on the port: a TransportError that names the address, within the timeout."""
    from mesh.broker.process import free_port

    port = free_port()
    t = plain_transport(f"mqtt://127.0.0.1:{port}", client_id="nobody")
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        await t.connect(timeout=3)
    await t.disconnect()
