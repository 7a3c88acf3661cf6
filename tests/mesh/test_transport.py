"""The Transport seam: the same behaviour suite on the in-memory twin and on a real Mosquitto
(the project's broker config, an extra account `suite` that may use suite/#).

What the runtime relies on: QoS 1 delivery with MQTT v5 properties, retained messages,
redelivery of what was not acknowledged to a durable session, queueing for an offline durable
session, Message Expiry, shared subscriptions, refused subscriptions, Maximum Packet Size.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from lifeops_mesh.broker import local_broker
from mesh import Inbound, PacketTooLarge, Transport
from mesh.broker.process import MosquittoProcess
from mesh.testing.brokers import BrokerUnderTest, InMemoryBroker, MosquittoBroker
from mesh.testing.wait import eventually
from mesh.topics import matches
from mesh.transport import MemoryBroker, Will
from tests.conftest import require_mosquitto

SUITE_ACL = "user suite\ntopic readwrite suite/#\n"


def _suite_allows(user: str | None, topic: str, mode: str) -> bool:
    return user == "suite" and matches("suite/#", topic)


@pytest.fixture(scope="module")
def suite_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    require_mosquitto()
    proc = local_broker(
        tmp_path_factory.mktemp("suite"), extra_acl=SUITE_ACL, extra_accounts=("suite",)
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(params=["memory", "mosquitto"])
def any_broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    if request.param == "memory":
        return InMemoryBroker(MemoryBroker(allow=_suite_allows, max_packet_size=262144))
    return MosquittoBroker(request.getfixturevalue("suite_mosquitto"))


class Inbox:
    """A connection's handler: records messages, answers with `code` (or raises)."""

    def __init__(self, t: Transport, *, fail: bool = False) -> None:
        self.messages: list[Inbound] = []
        self.fail = fail
        t.on_message = self.on

    async def on(self, msg: Inbound) -> int:
        self.messages.append(msg)
        if self.fail:
            raise RuntimeError("handler failed: leave it unacknowledged")
        return 0

    async def count(self, n: int) -> list[Inbound]:
        async def enough() -> bool:
            return len(self.messages) >= n

        await eventually(enough, timeout=5, what=f"{n} messages")
        return self.messages


@pytest.fixture
def topic() -> str:
    return f"suite/{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pub(any_broker: BrokerUnderTest) -> AsyncIterator[Transport]:
    t = any_broker.connect_as("suite", prefix="pub")
    await t.connect()
    yield t
    await t.disconnect()


async def test_qos1_with_v5_properties(
    any_broker: BrokerUnderTest, pub: Transport, topic: str
) -> None:
    """A `+` filter gets the message once, with response topic, correlation data, user
    properties and the remaining Message Expiry."""
    sub = any_broker.connect_as("suite")
    inbox = Inbox(sub)
    await sub.subscribe([topic.rsplit("/", 1)[0] + "/+"])
    await sub.connect()
    try:
        await pub.publish(
            topic,
            b"hello",
            response_topic=f"{topic}/reply",
            correlation_data=b"c-1",
            user_properties={"trace_id": "t1"},
            expiry_s=60,
        )
        (msg,) = await inbox.count(1)
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"hello", 1, False)
        assert msg.response_topic == f"{topic}/reply" and msg.correlation_data == b"c-1"
        assert msg.user_properties == {"trace_id": "t1"}
        assert msg.expiry_s is not None and 55 <= msg.expiry_s <= 60
    finally:
        await sub.disconnect()


async def test_retained_messages(any_broker: BrokerUnderTest, pub: Transport, topic: str) -> None:
    """A new subscriber gets the retained message with the retain flag; an empty retained
    payload clears it."""
    await pub.publish(topic, b"kept", retain=True)
    first = any_broker.connect_as("suite")
    inbox = Inbox(first)
    await first.subscribe([topic])
    await first.connect()
    (msg,) = await inbox.count(1)
    assert msg.payload == b"kept" and msg.retain
    await first.disconnect()
    await pub.publish(topic, b"", retain=True)
    later = any_broker.connect_as("suite")
    none = Inbox(later)
    await later.subscribe([topic])
    await later.connect()
    await asyncio.sleep(0.3)
    await later.disconnect()
    assert none.messages == []


async def test_unacknowledged_is_redelivered_to_the_durable_session(
    any_broker: BrokerUnderTest, pub: Transport, topic: str
) -> None:
    """A handler that fails leaves the message unacknowledged: after a reconnect of the same
    durable session it comes again, marked dup."""
    client_id = f"durable-{uuid.uuid4().hex[:8]}"
    t = any_broker.connection("suite", client_id, session_expiry_s=60)
    failing = Inbox(t, fail=True)
    await t.subscribe([topic])
    await t.connect()
    await pub.publish(topic, b"once")
    await failing.count(1)
    await t.disconnect()
    again = any_broker.connection("suite", client_id, session_expiry_s=60)
    inbox = Inbox(again)
    await again.subscribe([topic])
    await again.connect()
    try:
        (msg,) = await inbox.count(1)
        assert msg.payload == b"once" and msg.dup
    finally:
        await again.disconnect(end_session=True)


async def test_a_clean_disconnect_sends_no_will_and_can_end_the_session(
    any_broker: BrokerUnderTest, pub: Transport, topic: str
) -> None:
    """disconnect() is an MQTT DISCONNECT the broker receives (so no Last Will), and with
    end_session the broker drops the durable session: nothing is queued for it afterwards."""
    watcher = any_broker.connect_as("suite", prefix="will")
    wills = Inbox(watcher)
    await watcher.subscribe([f"{topic}/will"])
    await watcher.connect()
    client_id = f"ending-{uuid.uuid4().hex[:8]}"
    will = Will(topic=f"{topic}/will", payload=b"gone", retain=False)
    t = any_broker.connection("suite", client_id, session_expiry_s=60, will=will)
    Inbox(t)
    await t.subscribe([topic])
    await t.connect()
    await t.disconnect(end_session=True)
    await pub.publish(topic, b"nobody waits for this")
    back = any_broker.connection("suite", client_id, session_expiry_s=60)
    inbox = Inbox(back)
    await back.connect()
    try:
        await asyncio.sleep(0.5)
        assert inbox.messages == [], "the session was not ended"
        assert wills.messages == [], "a clean disconnect published the Last Will"
    finally:
        await back.disconnect(end_session=True)
        await watcher.disconnect()


async def test_offline_durable_session_queues_and_expiry_drops(
    any_broker: BrokerUnderTest, pub: Transport, topic: str
) -> None:
    """Messages for an offline durable session wait for it, except those whose Message
    Expiry passed meanwhile (a requester that gave up must not be served later)."""
    client_id = f"offline-{uuid.uuid4().hex[:8]}"
    t = any_broker.connection("suite", client_id, session_expiry_s=60)
    Inbox(t)
    await t.subscribe([topic])
    await t.connect()
    await t.disconnect()
    await pub.publish(topic, b"expires", expiry_s=1)
    await pub.publish(topic, b"waits")
    await asyncio.sleep(2.2)
    back = any_broker.connection("suite", client_id, session_expiry_s=60)
    inbox = Inbox(back)
    await back.subscribe([topic])
    await back.connect()
    try:
        await inbox.count(1)
        await asyncio.sleep(0.3)
        assert [m.payload for m in inbox.messages] == [b"waits"]
    finally:
        await back.disconnect(end_session=True)


async def test_shared_subscription_splits_the_work(
    any_broker: BrokerUnderTest, pub: Transport, topic: str
) -> None:
    """Two members of $share/g/...: every message reaches exactly one of them, both get some."""
    members = [any_broker.connect_as("suite", prefix=f"m{i}") for i in range(2)]
    inboxes = [Inbox(m) for m in members]
    for m in members:
        await m.subscribe([f"$share/work/{topic}"])
        await m.connect()
    try:
        for i in range(20):
            await pub.publish(topic, str(i).encode())

        async def all_there() -> bool:
            return sum(len(i.messages) for i in inboxes) >= 20

        await eventually(all_there, timeout=5, what="20 shared messages")
        await asyncio.sleep(0.2)
        got = sorted(int(m.payload) for i in inboxes for m in i.messages)
        assert got == list(range(20))
        assert all(i.messages for i in inboxes)
    finally:
        for m in members:
            await m.disconnect()


async def test_refused_subscription_is_reported(any_broker: BrokerUnderTest, topic: str) -> None:
    """A filter the ACL refuses comes back in `refused_filters` when the broker says so in its
    SUBACK (the twin, as EMQX and HiveMQ do); Mosquitto 2.0 grants it (SUBACK 0, measured)
    and then delivers nothing on it. Either way the permitted filters work."""
    t = any_broker.connect_as("suite")
    inbox = Inbox(t)
    await t.subscribe([topic, "stats/levelup"])
    await t.connect()
    other = any_broker.connect_as("suite", prefix="other")
    await other.connect()
    try:
        await t.subscribe([f"{topic}/more"])
        await other.publish(f"{topic}/more", b"still works")
        await inbox.count(1)
        refused = ["stats/levelup"] if any_broker.kind == "memory" else []
        assert t.refused_filters == refused
    finally:
        await other.disconnect()
        await t.disconnect()


async def test_packet_over_the_broker_limit_is_never_sent(pub: Transport, topic: str) -> None:
    """Over the broker's Maximum Packet Size (256 KiB): PacketTooLarge, still connected."""
    with pytest.raises(PacketTooLarge):
        await pub.publish(topic, b"x" * 262_144)
    assert pub.connected
    await pub.publish(topic, b"small")
