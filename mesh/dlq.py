"""Dead letters: rejected or unhandleable messages, stored and published on mesh/dlq/<agent>."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable

from mesh import codec
from mesh.metrics import Metrics
from mesh.schemas import DeadLetter, ErrorInfo
from mesh.store import Migration, Store
from mesh.transport import Inbound

log = logging.getLogger("mesh.dlq")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_dead_letters ("
            " id TEXT PRIMARY KEY, topic TEXT NOT NULL, record TEXT NOT NULL,"
            " error_code TEXT NOT NULL, received_at TEXT NOT NULL, replayed_at TEXT)",
        ),
    ),
)

Publish = Callable[[bytes], Awaitable[None]]


class DeadLetterSink:
    def __init__(self, agent: str, store: Store, publish: Publish, metrics: Metrics) -> None:
        self.agent = agent
        self._store = store
        self._publish = publish
        self._metrics = metrics

    async def send(self, msg: Inbound, code: str, message: str, trace_id: str | None) -> DeadLetter:
        text, encoding = codec.printable(msg.payload)
        record = DeadLetter(
            agent=self.agent,
            topic=msg.topic,
            payload=text,
            payload_encoding=encoding,
            error=ErrorInfo(code=code, message=message),
            received_at=dt.datetime.now(dt.UTC),
            response_topic=msg.response_topic,
            correlation_data=msg.correlation_data.hex() if msg.correlation_data else None,
            trace_id=trace_id,
        )
        body = codec.encode(record)
        self._metrics.dead_letters.labels(code).inc()
        log.warning("dead letter from %s: %s: %s", msg.topic, code, message)
        try:
            async with self._store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO mesh_dead_letters (id, topic, record, error_code, received_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    uuid.uuid4().hex,
                    msg.topic,
                    body.decode("utf-8"),
                    code,
                    record.received_at.isoformat(),
                )
        except Exception:
            log.exception("could not store dead letter; publishing it anyway")
        await self._publish(body)
        return record
