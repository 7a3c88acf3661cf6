"""What an agent sends, and what the broker will never take.

Four ways out, each checked against the contract first (`Contract.resolve`, or
`Contract.check_publish` for a topic resolved when it was staged): a publish by contract key
right away (`publish`), the committed outbox records (`record`, for the outbox relay), the
retained states (`state`, for the state publisher), and dead letters (`dlq`, for the sink this
publisher owns). A publish the broker refuses for good (a failure reason code, or a packet over
its Maximum Packet Size: `PacketTooLarge`, never sent) is counted in
`mesh_publish_failures_total{key,reason}`, remembered for health (`refusals`) and
dead-lettered.
"""

from __future__ import annotations

from typing import Any

from mesh import codec
from mesh.contract import Contract
from mesh.dlq import DeadLetterSink
from mesh.errors import PacketTooLarge, PublishRefused
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord
from mesh.receipts import ReceiptRecord
from mesh.rpc import TRACE_PROPERTY
from mesh.store import Store
from mesh.transport import Inbound, Transport

MAX_REFUSALS = 20  # topics remembered for health, the oldest forgotten first


class Publisher:
    """The publishing side of one agent: `name` is the principal the contract checks."""

    def __init__(
        self,
        *,
        name: str,
        contract: Contract,
        transport: Transport,
        metrics: Metrics,
        store: Store,
        dlq_cap: int,
        dlq_max_bytes: int,
    ) -> None:
        self.name = name
        self.contract = contract
        self.transport = transport
        self.metrics = metrics
        self.refusals: dict[str, str] = {}  # topic -> why the broker will never take it
        self.dead_letters = DeadLetterSink(name, store, self.dlq, metrics, payload_cap=dlq_cap)
        self.dead_letters.max_bytes = dlq_max_bytes

    async def publish(
        self, key: str, payload: Any, *, trace_id: str | None = None, **params: str
    ) -> None:
        """Publish by contract key right away (not through the outbox)."""
        entry, topic = self.contract.resolve(self.name, key, **params)
        await self.transport.publish(
            topic,
            codec.encode_value(payload, entry.format),
            qos=entry.qos,
            retain=entry.retain,
            user_properties=_trace(trace_id),
        )
        self.metrics.published.labels(key).inc()

    async def record(self, rec: OutboxRecord) -> None:
        """A committed outbox record (the relay's publisher)."""
        self.contract.check_publish(self.name, rec.topic_key, rec.topic)
        await self.transport.publish(
            rec.topic,
            rec.payload,
            qos=rec.qos,
            retain=rec.retain,
            user_properties=_trace(rec.trace_id),
        )
        self.metrics.published.labels(rec.topic_key).inc()

    async def state(self, topic: str, key: str, payload: bytes, trace_id: str | None) -> None:
        """A retained state, latest value (the state publisher's)."""
        self.contract.check_publish(self.name, key, topic)
        await self.transport.publish(
            topic, payload, qos=1, retain=True, user_properties=_trace(trace_id)
        )
        self.metrics.published.labels(key).inc()

    async def dlq(self, body: bytes) -> None:
        """A dead letter on mesh/dlq/<agent> (the sink's publisher)."""
        _, topic = self.contract.resolve(self.name, "dlq")
        await self.transport.publish(topic, body, qos=1)
        self.metrics.published.labels("dlq").inc()

    # -- what the broker will never take ---------------------------------------------------------

    def refused(self, key: str, topic: str, exc: Exception) -> str:
        """Count and remember an own publish the broker will never take; returns the reason.
        (A reply to a response topic the requester chose counts, but does not make the agent
        unhealthy: that is the requester's mistake.)"""
        reason = "too_large" if isinstance(exc, PacketTooLarge) else "refused"
        if isinstance(exc, PublishRefused):
            reason = f"refused_{exc.reason_code}"
        self.metrics.publish_failures.labels(key, reason).inc()
        if key == "reply":
            return reason
        self.refusals[topic] = reason
        while len(self.refusals) > MAX_REFUSALS:
            del self.refusals[next(iter(self.refusals))]
        return reason

    async def record_refused(self, rec: OutboxRecord, exc: Exception) -> None:
        reason = self.refused(rec.topic_key, rec.topic, exc)
        msg = Inbound(topic=rec.topic, payload=rec.payload, qos=rec.qos)
        await self.dead_letters.send(msg, f"publish_{reason}", str(exc), rec.trace_id)

    async def state_refused(self, topic: str, payload: bytes, exc: Exception) -> None:
        found = self.contract.match(topic)
        reason = self.refused(found[0].key if found else "state", topic, exc)
        msg = Inbound(topic=topic, payload=payload, qos=1, retain=True)
        await self.dead_letters.send(msg, f"publish_{reason}", str(exc), None)

    async def receipt_dead(self, rec: ReceiptRecord, reply: Any, code: str, why: str) -> None:
        """A receipt whose hook failed for good: dead-lettered (the receipt itself is stored)."""
        msg = Inbound(topic=rec.topic, payload=codec.encode(reply), qos=1)
        await self.dead_letters.send(msg, code, why, rec.trace_id)


def _trace(trace_id: str | None) -> dict[str, str] | None:
    return {TRACE_PROPERTY: trace_id} if trace_id else None
