"""Bounded work (#22), piece by piece: the admission of QoS 0 messages (on the in-memory twin,
which applies the same `Admission` as MqttTransport; the real-broker proof with real processes is
test_flood.py), and dead letters that cost a bounded number of writes and bytes (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from lifeops_contract import contract
from lifeops_contract.schemas import ActivityLogRequest
from mesh import MeshClient, Metrics, open_store
from mesh.dlq import MIGRATIONS, DeadLetterSink
from mesh.testing.brokers import InMemoryBroker
from mesh.testing.wait import eventually
from mesh.transport import Admission, Inbound, MemoryTransport
from tests.conftest import StartAgent, user

BAD = b'{"flood": "' + b"x" * 4000 + b'"}'


async def test_qos0_past_the_bound_is_dropped_and_counted_and_qos1_never(
    start_agent: StartAgent, db_url: str
) -> None:
    """3,000 invalid QoS 0 requests as fast as the twin delivers them: Stats never holds more
    than the bound (here 50 in hand, 200 a second), drops the rest before decoding them,
    counts every one (handled + dropped = delivered), dead-letters a bounded number of
    records, and answers a valid QoS 1 request afterwards."""
    broker = InMemoryBroker()
    async with start_agent("stats", broker, db_url) as stats:
        transport = stats.transport
        assert isinstance(transport, MemoryTransport)
        bound = 50  # tighter than the default (1,000 in hand, 1,000/s): the test stays fast
        transport.admission = Admission(max_held=bound, per_s=200.0)
        flooder = broker.connect_as("tester")
        await flooder.connect()
        most = 0
        for _ in range(3000):
            await flooder.publish("stats/activities/log", BAD, qos=0)
            most = max(most, transport.admission.held)
        await flooder.disconnect()

        def counts() -> tuple[float, float]:
            return (
                stats.metrics.total("mesh_messages_received_total"),
                stats.metrics.total("mesh_messages_dropped_total"),
            )

        async def settled() -> bool:
            handled, dropped = counts()
            return handled + dropped == 3000

        await eventually(settled, what="handled + dropped = delivered")
        handled, dropped = counts()
        assert most <= bound and dropped > 0 and handled > 0, (most, handled, dropped)
        async with stats.store.transaction() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM mesh_dead_letters")
        assert row is not None and row[0] <= 100  # the burst; the summary comes at interval end
        client = MeshClient.over(broker.connect_as("tester"), contract(), "tester")
        await client.connect()
        try:
            body = ActivityLogRequest(user_id=user(), activity_type="reading", source_ref="r1")
            reply = await client.request("activities_log", body, timeout=10)
            assert reply.success, reply.error
        finally:
            await client.close()


def test_admission_bounds_messages_bytes_and_rate() -> None:
    gate = Admission(max_held=3, max_held_bytes=100, per_s=0.0)
    assert [gate.qos0() for _ in range(4)] == [None, None, None, "overload"]  # the burst, no rate
    gate = Admission(max_held=2, max_held_bytes=100, per_s=1e9)
    gate.taken(10)
    gate.taken(10)
    assert gate.qos0() == "overload"  # two in hand
    gate.done(10)
    assert gate.qos0() is None
    gate.taken(200)
    gate.done(10)
    assert gate.qos0() == "overload"  # one in hand, but 200 bytes of it


def _msg(n: int, size: int = 100) -> Inbound:
    return Inbound(topic="stats/activities/log", payload=b"%d" % n + b"x" * size, qos=0)


async def _records(url: str) -> list[dict[str, Any]]:
    async with open_store(url) as store, store.transaction() as tx:
        rows = await tx.fetchall("SELECT record FROM mesh_dead_letters")
    return [json.loads(r[0]) for r in rows]


async def test_a_flood_of_dead_letters_is_a_burst_then_one_summary(db_url: str) -> None:
    """250 dead letters within an interval: 20 written one by one (the burst here), then one
    summary record with the count of the other 230, its first error code and excerpt; the
    metric counts all 250."""
    published: list[bytes] = []

    async def publish(body: bytes) -> None:
        published.append(body)

    metrics = Metrics()
    async with open_store(db_url) as store:
        await store.migrate("mesh_dlq", MIGRATIONS)
        sink = DeadLetterSink("stats", store, publish, metrics, interval_s=1.0, burst=20)
        for n in range(250):
            await sink.send(_msg(n), "invalid_json" if n < 30 else "validation_error", "bad", None)
        await eventually(lambda: _summary_in(db_url), timeout=10, what="the summary record")
        await asyncio.sleep(0.1)
    records = await _records(db_url)
    assert len(records) == 21
    (summary,) = [r for r in records if r["count"] > 1]
    assert summary["count"] == 230 and summary["error"]["code"] == "invalid_json"
    assert (
        summary["payload"].startswith("20x")
        and "230 more dead letters" in summary["error"]["message"]
    )
    assert metrics.total("mesh_dead_letters_total") == 250
    assert len(published) == 21


async def _summary_in(url: str) -> bool:
    return any(r["count"] > 1 for r in await _records(url))


async def test_dead_letter_bytes_are_capped_when_written(db_url: str) -> None:
    """With a 100 KB cap, 40 dead letters of 10 KB each: the oldest go as new ones come (the
    stored bytes never pass the cap by more than one record), and they are counted."""

    async def publish(body: bytes) -> None:
        return None

    metrics = Metrics()
    async with open_store(db_url) as store:
        await store.migrate("mesh_dlq", MIGRATIONS)
        sink = DeadLetterSink("stats", store, publish, metrics, max_bytes=100_000)
        for n in range(40):
            await sink.send(_msg(n, 10_000), "validation_error", "bad", None)
        async with store.transaction() as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*), SUM(LENGTH(record) + LENGTH(raw)) FROM mesh_dead_letters"
            )
    assert row is not None
    count, stored = int(row[0]), int(row[1])
    assert stored <= 100_000 + 25_000 and count < 40, (count, stored)
    assert metrics.total("mesh_pruned_rows_total") == 40 - count
    newest = max(int(r["payload"].split("x")[0]) for r in await _records(db_url))
    assert newest == 39
