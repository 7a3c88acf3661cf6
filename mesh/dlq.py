"""Dead letters: rejected or unhandleable messages, stored and published on mesh/dlq/<agent>.

A dead letter must never be the next problem: what is published carries a bounded excerpt of
the payload (its first EXCERPT_BYTES, with its length and SHA-256) and a bounded error message,
so a hostile 200 KiB payload of control bytes (6x longer when JSON-escaped) cannot make the
agent's own publish exceed the broker's packet limit. The whole payload stays in the agent's
database, up to a configured cap, for `lifeops-mesh dlq replay`.

A flood must not become as many writes: per interval (`SUMMARY_INTERVAL_S`) the first
`BURST` dead letters are stored and published one by one; the rest of that interval's are
counted (`mesh_dead_letters_total` counts every one) and become one summary record per topic
when the interval ends: the first such message's excerpt and error code, and `count`, how many it
stands for. And the table is capped in bytes when written (`max_bytes`): past the cap the oldest
records go (counted in `mesh_pruned_rows_total{table="mesh_dead_letters"}`), down to 90% of it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec

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
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # all stored dead letters together
SUMMARY_INTERVAL_S = 10.0
BURST = 100  # dead letters written one by one per interval; the rest are summarised
MAX_PUBLISHING = 256  # dead letters on their way to the broker at once
MAX_SUMMARIES = 100  # topics summarised one by one per interval; the rest share one record

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


class _Summary:
    """The dead letters of one topic beyond the interval's burst."""

    __slots__ = ("count", "first", "first_code", "first_message", "trace_id")

    def __init__(self, msg: Inbound, code: str, message: str, trace_id: str | None) -> None:
        self.first = msg
        self.first_code = code
        self.first_message = message
        self.trace_id = trace_id
        self.count = 0


class DeadLetterSink:
    def __init__(
        self,
        agent: str,
        store: Store,
        publish: Publish,
        metrics: Metrics,
        *,
        payload_cap: int = DEFAULT_PAYLOAD_CAP,
        max_bytes: int = DEFAULT_MAX_BYTES,
        interval_s: float = SUMMARY_INTERVAL_S,
        burst: int = BURST,
    ) -> None:
        self.agent = agent
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._cap = payload_cap
        self.max_bytes = max_bytes
        self._stored_bytes: int | None = None  # known after the first write
        self._cap_lock = asyncio.Lock()
        self._interval = interval_s
        self._burst = burst
        self._window_end = 0.0
        self._written = 0  # one by one in the current interval
        self._summaries: dict[str, _Summary] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[int]] = set()
        self._publishing: set[asyncio.Task[None]] = set()

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

    async def send(
        self, msg: Inbound, code: str, message: str, trace_id: str | None
    ) -> DeadLetter | None:
        """Store (whole payload up to the cap) and publish (excerpt) one dead letter, or, past
        the interval's burst, count it into its topic's summary (None). Neither failing stops
        the caller: the message is acknowledged either way."""
        self._metrics.dead_letters.labels(code).inc()
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + self._interval
            self._written = 0
        if self._written >= self._burst:
            key = msg.topic if len(self._summaries) < MAX_SUMMARIES else "*"
            summary = self._summaries.get(msg.topic) or self._summaries.get(key)
            if summary is None:
                summary = self._summaries[key] = _Summary(msg, code, message, trace_id)
            summary.count += 1
            if self._flusher is None:
                delay = max(0.0, self._window_end - now)
                self._flusher = asyncio.get_running_loop().call_later(delay, self._flush_soon)
            return None
        self._written += 1
        record = self.record(msg, code, message, trace_id)
        log.warning("dead letter from %s: %s: %s", msg.topic[:200], code, record.error.message)
        await self._write(msg, record)
        return record

    def _flush_soon(self) -> None:
        self._flusher = None
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> int:
        """Write the pending summaries now (the interval ended, or the agent stops); returns
        how many."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        summaries, self._summaries = self._summaries, {}
        for topic, s in summaries.items():
            text = (
                f"{s.count} more dead letters on {s.first.topic if topic != '*' else 'many topics'}"
                f" within {self._interval:g} s, summarised"
                f" in this one record (the first: {s.first_code}: {s.first_message})"
            )
            record = self.record(s.first, s.first_code, text, s.trace_id)
            record = msgspec.structs.replace(record, count=s.count)
            log.warning("dead letters from %s: %s", topic[:200], record.error.message)
            await self._write(s.first, record)
        return len(summaries)

    async def _write(self, msg: Inbound, record: DeadLetter) -> None:
        body = codec.encode(record)
        raw = msg.payload[: self._cap]
        try:
            async with self._store.transaction() as tx:
                await tx.execute(
                    "INSERT INTO mesh_dead_letters (id, topic, record, error_code, received_at,"
                    " raw) VALUES (?, ?, ?, ?, ?, ?)",
                    uuid.uuid4().hex,
                    msg.topic,
                    body.decode("utf-8"),
                    record.error.code,
                    record.received_at.isoformat(),
                    raw,
                )
            await self._keep_within_cap(len(body) + len(raw))
        except Exception:
            log.exception("could not store dead letter; publishing it anyway")
        if len(self._publishing) >= MAX_PUBLISHING:
            log.error("dead letter of %s stored, not published: %d still being published",
                      msg.topic[:200], len(self._publishing))  # fmt: skip
            return
        # Not awaited: the message in hand is done once its dead letter is stored. Under a
        # flood the broker's PUBACK waits behind everything queued for this client, and a
        # message held for it would hold the agent's drain on stop.
        task = asyncio.ensure_future(self._publish_one(msg.topic, body))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_one(self, topic: str, body: bytes) -> None:
        try:
            await self._publish(body)
        except TransportError as exc:
            log.error("could not publish dead letter of %s: %s", topic[:200], exc)

    async def _keep_within_cap(self, added: int) -> None:
        """The stored bytes stay under `max_bytes`: past it, the oldest records go (to 90%)."""
        if self._stored_bytes is not None:
            self._stored_bytes += added
            if self._stored_bytes <= self.max_bytes:
                return
        async with self._cap_lock:  # one count at a time; the others wait for its result
            if self._stored_bytes is not None and self._stored_bytes <= self.max_bytes:
                return
            await self._trim()

    async def _trim(self) -> None:
        async with self._store.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, LENGTH(record) + COALESCE(LENGTH(raw), 0) FROM mesh_dead_letters"
                " ORDER BY received_at DESC"
            )
        total = sum(int(size) for _, size in rows)
        self._stored_bytes = total
        if total <= self.max_bytes:
            return
        kept, drop = 0, list[object]()
        for row_id, size in rows:  # newest first: keep up to 90% of the cap, drop the rest
            if drop or kept + int(size) > self.max_bytes * 0.9:
                drop.append(row_id)
            else:
                kept += int(size)
        self._stored_bytes = kept
        for start in range(0, len(drop), 500):
            chunk = drop[start : start + 500]
            async with self._store.transaction() as tx:
                await tx.execute(
                    f"DELETE FROM mesh_dead_letters WHERE id IN ({', '.join('?' for _ in chunk)})",
                    *chunk,
                )
        self._metrics.pruned.labels("mesh_dead_letters").inc(len(drop))
        log.warning(
            "dead letters over %d bytes: dropped the %d oldest records", self.max_bytes, len(drop)
        )
