"""Transactional outbox: events are written in the handler's transaction, published after commit.

A record is marked sent only after the broker's PUBACK; records left unsent by a crash or an
outage are published again by the sweep (at startup and periodically). Consumers deduplicate by
the payload's event id, so a record published twice has one effect. A record the broker refuses
for good (a failure reason code, or larger than its packet limit) is marked failed, handed to
`on_refused` (a dead letter) and the queue moves on: no poison record blocks the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from mesh.backoff import Backoff
from mesh.errors import PacketTooLarge, PublishRefused, TransportError
from mesh.store import Migration, Store, Tx
from mesh.supervise import Supervisor

log = logging.getLogger("mesh.outbox")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_outbox ("
            " id TEXT PRIMARY KEY, seq BIGINT NOT NULL, topic_key TEXT NOT NULL,"
            " topic TEXT NOT NULL, payload TEXT NOT NULL, qos INTEGER NOT NULL,"
            " retain INTEGER NOT NULL, trace_id TEXT, created_at TEXT NOT NULL,"
            " sent_at TEXT, attempts INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS mesh_outbox_unsent ON mesh_outbox (sent_at, seq)",
        ),
    ),
    Migration(2, ("ALTER TABLE mesh_outbox ADD COLUMN failed TEXT",)),
)


class OutboxRecord(msgspec.Struct, kw_only=True):
    id: str
    seq: int
    topic_key: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    trace_id: str | None
    created_at: str


Publisher = Callable[[OutboxRecord], Awaitable[None]]
OnRefused = Callable[[OutboxRecord, Exception], Awaitable[None]]
PERMANENT = (PacketTooLarge, PublishRefused)


def retryable(exc: BaseException) -> bool:
    """A publish that may go through later: the connection (TransportError, a timeout). The
    broker's refusals and everything else (a contract violation, a bug) are final for that
    record: it is dead-lettered and the queue moves on."""
    return isinstance(exc, TransportError | TimeoutError) and not isinstance(exc, PERMANENT)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


async def stage(
    tx: Tx,
    *,
    topic_key: str,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    trace_id: str | None,
    seq: int,
) -> OutboxRecord:
    rec = OutboxRecord(
        id=uuid.uuid4().hex,
        seq=seq,
        topic_key=topic_key,
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        trace_id=trace_id,
        created_at=_now(),
    )
    tx.defer(
        "INSERT INTO mesh_outbox (id, seq, topic_key, topic, payload, qos, retain, trace_id,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rec.id,
        rec.seq,
        rec.topic_key,
        rec.topic,
        payload.decode("utf-8"),
        qos,
        int(retain),
        trace_id,
        rec.created_at,
    )
    return rec


class OutboxRelay:
    """Publishes committed records in order and marks them sent after PUBACK."""

    def __init__(
        self,
        store: Store,
        publish: Publisher,
        *,
        sweep_interval_s: float = 5.0,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self.on_refused = on_refused
        self._sweep_interval = sweep_interval_s
        self._queue: asyncio.Queue[OutboxRecord] = asyncio.Queue()
        self.supervisor = Supervisor()
        self._inflight: set[str] = set()
        self._seq = 0

    def next_seq(self) -> int:
        # Monotonic per process; ties across processes are broken by id, which is fine for
        # independent events and for retained state (latest write wins within one agent).
        self._seq = max(self._seq + 1, int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000))
        return self._seq

    async def start(self, supervisor: Supervisor | None = None) -> None:
        if supervisor is not None:
            self.supervisor = supervisor
        self.supervisor.start("outbox-relay", self._run)
        self.supervisor.start("outbox-sweep", self._sweep_loop)

    async def stop(self, timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("outbox: %d records left for the next start", self._queue.qsize())
        await self.supervisor.stop(5, "outbox-relay", "outbox-sweep")

    def submit(self, records: list[OutboxRecord]) -> None:
        """Hand over records that were just committed."""
        for rec in records:
            if rec.id not in self._inflight:
                self._inflight.add(rec.id)
                self._queue.put_nowait(rec)

    async def pending(self) -> tuple[int, float]:
        """(records not yet sent, age in seconds of the oldest)."""
        return await self._store.backlog("mesh_outbox", "sent_at IS NULL")

    async def sweep(self) -> int:
        """Queue every unsent record (after a crash or an outage); returns how many."""
        async with self._store.read() as tx:
            rows = await tx.fetchall(
                "SELECT id, seq, topic_key, topic, payload, qos, retain, trace_id, created_at"
                " FROM mesh_outbox WHERE sent_at IS NULL ORDER BY seq, id LIMIT 5000"
            )
        records = [
            OutboxRecord(
                id=r[0],
                seq=int(r[1]),
                topic_key=r[2],
                topic=r[3],
                payload=r[4].encode("utf-8"),
                qos=int(r[5]),
                retain=bool(r[6]),
                trace_id=r[7],
                created_at=r[8],
            )
            for r in rows
        ]
        self.submit(records)
        return len(records)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
                self.supervisor.ok("outbox-sweep")
            except Exception as exc:
                self.supervisor.failed("outbox-sweep", exc)
            await asyncio.sleep(self._sweep_interval)

    async def _refuse(self, refused: Sequence[tuple[OutboxRecord, Exception]]) -> None:
        """Records the broker will never take: marked failed (never sent again) and handed to
        `on_refused`; the queue goes on without them."""
        if not refused:
            return
        try:
            async with self._store.transaction() as tx:
                now = _now()
                await tx.executemany(
                    "UPDATE mesh_outbox SET sent_at = ?, failed = ?, attempts = attempts + 1"
                    " WHERE id = ?",
                    [(now, str(why)[:500], rec.id) for rec, why in refused],
                )
        except Exception as exc:
            log.warning("outbox: marking %d refused records failed: %s", len(refused), exc)
        for rec, why in refused:
            log.error("outbox: %s refused for good: %s", rec.topic, why)
            self._inflight.discard(rec.id)
            self._queue.task_done()
            if self.on_refused is not None:
                try:
                    await self.on_refused(rec, why)
                except Exception as exc:  # the dead letter failed: the queue goes on
                    self.supervisor.failed("outbox-relay", exc, cycle=False)

    async def _run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            try:
                await self._relay(batch, backoff)
                self.supervisor.ok("outbox-relay")
            except Exception as exc:  # a bug: the sweep hands the records over again
                self.supervisor.failed("outbox-relay", exc)
                for rec in batch:
                    self._inflight.discard(rec.id)
                await backoff.sleep()

    async def _relay(self, batch: list[OutboxRecord], backoff: Backoff) -> None:
        """Publish `batch` until every record is sent or refused for good."""
        while batch:
            # Published in order, PUBACKs awaited together; only acknowledged ones are marked.
            results = await asyncio.gather(
                *(self._publish(rec) for rec in batch), return_exceptions=True
            )
            done = [rec for rec, res in zip(batch, results, strict=True) if res is None]
            refused = [
                (rec, res)
                for rec, res in zip(batch, results, strict=True)
                if isinstance(res, Exception) and not retryable(res)
            ]
            failed = [
                rec
                for rec, res in zip(batch, results, strict=True)
                if res is not None and not (isinstance(res, Exception) and not retryable(res))
            ]
            await self._refuse(refused)
            try:
                if done:
                    async with self._store.transaction() as tx:
                        now = _now()
                        await tx.executemany(
                            "UPDATE mesh_outbox SET sent_at = ?, attempts = attempts + 1"
                            " WHERE id = ?",
                            [(now, rec.id) for rec in done],
                        )
            except Exception as exc:
                # Published but not marked: the sweep publishes them again (harmless).
                log.warning("outbox: marking %d records sent failed: %s", len(done), exc)
                self.supervisor.failed("outbox-relay", exc)
            for rec in done:
                self._inflight.discard(rec.id)
                self._queue.task_done()
            if failed:
                err = next(r for r in results if r is not None)
                delay = await backoff.sleep()
                log.warning("outbox: %d publishes failed (%s); retried after %.1fs",
                            len(failed), err, delay)  # fmt: skip
            else:
                backoff.reset()
            batch = failed
