"""Dead letters: rejected or unhandleable messages, stored and published on mesh/dlq/<agent>.

A dead letter must never be the next problem: what is published carries a bounded excerpt of
the payload (its first EXCERPT_BYTES, with its length and SHA-256) and a bounded error message,
so a hostile 200 KiB payload of control bytes (6x longer when JSON-escaped) cannot make the
agent's own publish exceed the broker's packet limit. The whole payload stays in the agent's
database, up to a configured cap, for `lifeops-mesh dlq replay`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from mesh import codec
from mesh.errors import TransportError
from mesh.metrics import PUBLISH_FAILURE_REASONS, Metrics
from mesh.schemas import DeadLetter, ErrorInfo
from mesh.store import Migration, Store
from mesh.transport import Inbound

log = logging.getLogger("mesh.dlq")

EXCERPT_BYTES = 4096
MESSAGE_CHARS = 1000
DEFAULT_PAYLOAD_CAP = 262_144  # what the broker lets through at most (max_packet_size)

# The dead-letter codes the runtime itself gives (an app's handlers add their own refusals).
RUNTIME_CODES = (
    "validation_error", "invalid_json", "invalid_encoding", "undeclared_topic",
    "invalid_response_topic", "expired", "retained_command", "internal_error", "not_found",
    "poison_message", "receipt_hook_failed", "receipt_send_failed",
    *(f"publish_{reason}" for reason in PUBLISH_FAILURE_REASONS),
)  # fmt: skip

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_dead_letters ("
            " id TEXT PRIMARY KEY, topic TEXT NOT NULL, record TEXT NOT NULL,"
            " error_code TEXT NOT NULL, received_at TEXT NOT NULL, replayed_at TEXT)",
        ),
    ),
    # The whole payload (up to the cap), beside the record's excerpt.
    Migration(
        2,
        ("ALTER TABLE mesh_dead_letters ADD COLUMN raw BLOB",),
        postgresql=("ALTER TABLE mesh_dead_letters ADD COLUMN IF NOT EXISTS raw BYTEA",),
    ),
)

Publish = Callable[[bytes], Awaitable[None]]


Encoding = Literal["utf-8", "base64"]


def excerpt(payload: bytes) -> tuple[str, Encoding, bool]:
    """(text, encoding, truncated) of a payload's first EXCERPT_BYTES: UTF-8 when it is (cut
    at a character boundary), base64 otherwise."""
    part = payload[:EXCERPT_BYTES]
    truncated = len(payload) > EXCERPT_BYTES
    for cut in range(4):  # a multi-byte character may straddle the cut
        try:
            return part[: len(part) - cut].decode("utf-8"), "utf-8", truncated or cut > 0
        except UnicodeDecodeError:
            if not truncated:
                break
    return base64.b64encode(part).decode("ascii"), "base64", truncated


def bounded(message: str, limit: int = MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


class DeadLetterSink:
    def __init__(
        self,
        agent: str,
        store: Store,
        publish: Publish,
        metrics: Metrics,
        *,
        payload_cap: int = DEFAULT_PAYLOAD_CAP,
    ) -> None:
        self.agent = agent
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._cap = payload_cap

    def record(self, msg: Inbound, code: str, message: str, trace_id: str | None) -> DeadLetter:
        text, encoding, truncated = excerpt(msg.payload)
        return DeadLetter(
            agent=self.agent,
            topic=msg.topic,
            payload=text,
            payload_encoding=encoding,
            payload_length=len(msg.payload),
            payload_sha256=hashlib.sha256(msg.payload).hexdigest(),
            payload_truncated=truncated,
            error=ErrorInfo(code=code, message=bounded(message)),
            received_at=dt.datetime.now(dt.UTC),
            response_topic=msg.response_topic[:256] if msg.response_topic else None,
            correlation_data=msg.correlation_data[:64].hex() if msg.correlation_data else None,
            trace_id=trace_id[:64] if trace_id else None,
        )

    async def send(self, msg: Inbound, code: str, message: str, trace_id: str | None) -> DeadLetter:
        """Store (whole payload up to the cap) and publish (excerpt) one dead letter. Neither
        failing stops the caller: the message is acknowledged either way."""
        record = self.record(msg, code, message, trace_id)
        body = codec.encode(record)
        self._metrics.dead_letters.labels(code).inc()
        log.warning("dead letter from %s: %s: %s", msg.topic[:200], code, record.error.message)
        try:
            async with self._store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO mesh_dead_letters (id, topic, record, error_code, received_at,"
                    " raw) VALUES (?, ?, ?, ?, ?, ?)",
                    uuid.uuid4().hex,
                    msg.topic,
                    body.decode("utf-8"),
                    code,
                    record.received_at.isoformat(),
                    msg.payload[: self._cap],
                )
        except Exception:
            log.exception("could not store dead letter; publishing it anyway")
        try:
            await self._publish(body)
        except TransportError as exc:
            log.error("could not publish dead letter of %s: %s", msg.topic[:200], exc)
        return record
