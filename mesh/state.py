"""Retained state topics, latest value wins: written in the handler's transaction, published
coalesced.

A state topic (e.g. stats/character/<user>) only ever needs its newest value on the broker. The
handler upserts it into `mesh_state` (one row per topic, a version counter); a publisher sends
the rows whose version is newer than the one last acknowledged, at most every `interval_s` (four
times that while flushes are large), so a user with ten activities in a second gets one retained
update, not ten. Rows survive a crash and
are published after the restart; when the broker has lost its retained messages (a new session),
everything is republished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mesh.backoff import Backoff
from mesh.outbox import retryable
from mesh.store import Migration, Store, Tx
from mesh.supervise import Supervisor

log = logging.getLogger("mesh.state")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_state ("
            " topic TEXT PRIMARY KEY, topic_key TEXT NOT NULL, payload TEXT NOT NULL,"
            " trace_id TEXT, version BIGINT NOT NULL, published_version BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS mesh_state_dirty ON mesh_state (published_version)",
        ),
    ),
    # What was published lives in its own table: handlers (writing mesh_state) and publishers
    # (writing this) never lock each other's rows, so several agents on one database cannot
    # deadlock between a batch and a publisher; publishers lock in topic order.
    Migration(
        2,
        (
            "CREATE TABLE IF NOT EXISTS mesh_state_published ("
            " topic TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        ),
    ),
)

Publish = Callable[[str, str, bytes, str | None], Awaitable[None]]  # topic, key, payload, trace
OnRefused = Callable[[str, bytes, Exception], Awaitable[None]]  # topic, payload, why


async def put(tx: Tx, *, topic: str, topic_key: str, payload: bytes, trace_id: str | None) -> None:
    tx.defer(
        "INSERT INTO mesh_state (topic, topic_key, payload, trace_id, version, published_version)"
        " VALUES (?, ?, ?, ?, 1, 0) ON CONFLICT (topic) DO UPDATE SET"
        " payload = excluded.payload, trace_id = excluded.trace_id,"
        " version = mesh_state.version + 1",
        topic,
        topic_key,
        payload.decode("utf-8"),
        trace_id,
    )


async def read(tx: Tx, topic: str) -> bytes | None:
    """The latest payload staged for a retained topic (b"" when cleared), None when never."""
    row = await tx.fetchone("SELECT payload FROM mesh_state WHERE topic = ?", topic)
    return row[0].encode("utf-8") if row else None


async def read_many(tx: Tx, topics: list[str]) -> dict[str, bytes]:
    """The latest payloads of several retained topics (those never staged are left out)."""
    out: dict[str, bytes] = {}
    for start in range(0, len(topics), 500):
        part = topics[start : start + 500]
        marks = ", ".join("?" for _ in part)
        rows = await tx.fetchall(
            f"SELECT topic, payload FROM mesh_state WHERE topic IN ({marks})", *part
        )
        out.update({r[0]: r[1].encode("utf-8") for r in rows})
    return out


async def read_all(tx: Tx, topic_key: str) -> list[tuple[str, bytes, str | None]]:
    """(topic, payload, trace id) of every retained topic of one contract key."""
    rows = await tx.fetchall(
        "SELECT topic, payload, trace_id FROM mesh_state WHERE topic_key = ? ORDER BY topic",
        topic_key,
    )
    return [(r[0], r[1].encode("utf-8"), r[2]) for r in rows]


async def forget_published(tx: Tx, topics: list[str] | None = None) -> None:
    """Forget that `topics` (all when None) were published: the publisher sends them again
    (after the broker lost retained messages)."""
    if topics is None:
        await tx.execute("DELETE FROM mesh_state_published")
        return
    await tx.executemany("DELETE FROM mesh_state_published WHERE topic = ?", [(t,) for t in topics])


class StatePublisher:
    def __init__(
        self,
        store: Store,
        publish: Publish,
        *,
        interval_s: float = 0.25,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self.on_refused = on_refused
        self._interval = interval_s
        self._wake = asyncio.Event()
        self.supervisor = Supervisor()

    async def start(self, supervisor: Supervisor | None = None) -> None:
        if supervisor is not None:
            self.supervisor = supervisor
        self.supervisor.start("state-publisher", self._run)

    async def stop(self) -> None:
        if self.supervisor.running("state-publisher"):
            try:
                await asyncio.wait_for(self.flush(), 5)
            except Exception as exc:
                log.warning("state not flushed at stop (published after restart): %s", exc)
            await self.supervisor.stop(5, "state-publisher")

    def changed(self) -> None:
        self._wake.set()

    async def republish_all(self) -> None:
        """The broker lost its retained messages: send every state again."""
        async with self._store.transaction() as tx:
            await forget_published(tx)
        self._wake.set()

    async def converge(self, topic_keys: list[str], retained: dict[str, bytes]) -> int:
        """The broker holds `retained` (topic -> payload) under this agent's state topics of
        `topic_keys`: every committed value it lacks or holds differently (a broker restored
        from an old snapshot says `session present` all the same) is published again.
        Returns how many. Topics the agent never staged are left alone (not necessarily its)."""
        stale: list[str] = []
        async with self._store.transaction() as tx:
            for key in topic_keys:
                for topic, payload, _ in await read_all(tx, key):
                    if retained.get(topic, b"") != payload:
                        stale.append(topic)
            if stale:
                await forget_published(tx, stale)
        if stale:
            log.info(
                "%d retained states differ from the database: publishing them again", len(stale)
            )
            self._wake.set()
        return len(stale)

    async def pending(self) -> int:
        async with self._store.read() as tx:
            row = await tx.fetchone(
                "SELECT COUNT(*) FROM mesh_state s LEFT JOIN mesh_state_published p"
                " ON p.topic = s.topic WHERE p.version IS NULL OR s.version > p.version"
            )
        return int(row[0]) if row else 0

    async def flush(self) -> int:
        async with self._store.read() as tx:
            rows = await tx.fetchall(
                "SELECT s.topic, s.topic_key, s.payload, s.trace_id, s.version FROM mesh_state s"
                " LEFT JOIN mesh_state_published p ON p.topic = s.topic"
                " WHERE p.version IS NULL OR s.version > p.version ORDER BY s.topic LIMIT 5000"
            )
        if not rows:
            return 0
        results = await asyncio.gather(
            *(self._publish(r[0], r[1], r[2].encode("utf-8"), r[3]) for r in rows),
            return_exceptions=True,
        )
        # A value the broker refuses for good (reason code, over its packet limit), or that
        # fails for any other reason than the connection (a contract violation, a bug), counts
        # as published: it is handed to `on_refused` (a dead letter), not retried forever.
        refused = [
            (r, res)
            for r, res in zip(rows, results, strict=True)
            if isinstance(res, Exception) and _final(res)
        ]
        for r, exc in refused:
            log.error("state %s refused for good: %s", r[0], exc)
            if self.on_refused is not None:
                try:
                    await self.on_refused(r[0], r[2].encode("utf-8"), exc)
                except Exception as why:  # the dead letter failed: the others go on
                    self.supervisor.failed("state-publisher", why, cycle=False)
        done = sorted(
            (r[0], int(r[4]))
            for r, res in zip(rows, results, strict=True)
            if res is None or _final(res)
        )
        if done:
            async with self._store.transaction() as tx:
                await tx.executemany(
                    "INSERT INTO mesh_state_published (topic, version) VALUES (?, ?)"
                    " ON CONFLICT (topic) DO UPDATE SET version = excluded.version"
                    " WHERE mesh_state_published.version < excluded.version",
                    done,
                )
        failed = len(rows) - len(done)
        if failed:
            raise RuntimeError(f"{failed} state publishes failed")
        return len(rows)

    async def _run(self) -> None:
        backoff = Backoff(self._interval, 10.0)
        pause = self._interval
        while True:
            try:
                async with asyncio.timeout(5):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                published = await self.flush()
                backoff.reset()
                self.supervisor.ok("state-publisher")
                # Under load, wait longer between flushes: more updates per topic coalesce
                # into one publish (a busy user's sheet once a second, not four times).
                pause = self._interval if published < 100 else self._interval * 4
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.supervisor.failed("state-publisher", exc)
                pause = backoff.next_delay()
                self._wake.set()
            await asyncio.sleep(pause)


def _final(res: BaseException | None) -> bool:
    """A publish that failed for another reason than the connection (see outbox.retryable)."""
    return isinstance(res, Exception) and not retryable(res)
