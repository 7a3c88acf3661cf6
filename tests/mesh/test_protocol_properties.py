"""Hypothesis searches for a delivery sequence that loses or doubles XP or events.

(On PostgreSQL with three real agent processes: tests/test_shared_subscription.py.)

The model drives the real group committer, inbox, outbox and Stats handlers on a real SQLite
file (no broker: the broker's part, at-least-once delivery with redelivery, is what the rules
simulate). Rules: deliver an activity, deliver it again (duplicate), crash between commit and
acknowledgement (the batch commits, the acks are lost, the broker redelivers), crash before
commit (nothing committed, redelivered), deliver a batch in shuffled order across users, and run
the outbox relay, once or twice (a relay crash after PUBACK, before marking sent).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogRequest, LevelUp
from mesh import codec, installation_key
from mesh.agent import RUNTIME_MIGRATIONS
from mesh.handler import Route
from mesh.inbox import Delivery, GroupCommitter
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord, OutboxRelay
from mesh.store import open_store
from mesh.transport import Inbound
from stats_agent.handlers import StatsHandlers, activity_identity
from stats_agent.repository import MIGRATIONS
from stats_agent.rules import load_rules

USERS = ["ann", "bo", "cy"]
ACTIVITIES = [(f"a{i}", USERS[i % 3], {"STR": 10 + 7 * i}) for i in range(12)]


class MeshProtocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="proto-"))
        self.published: list[OutboxRecord] = []
        self.accepted: dict[str, tuple[str, int]] = {}  # activity -> (user, xp)
        self.loop.run_until_complete(self._setup())

    async def _setup(self) -> None:
        self.store = open_store(f"sqlite:///{self.dir / 'p.db'}")
        await self.store.open()
        for comp, migs in RUNTIME_MIGRATIONS.items():
            await self.store.migrate(comp, migs)
        await self.store.migrate("stats", MIGRATIONS)

        async def publish(rec: OutboxRecord) -> None:
            self.published.append(rec)

        self.outbox = OutboxRelay(self.store, publish)
        self.committer = GroupCommitter(
            agent="stats",
            store=self.store,
            contract=default_contract(),
            relay=self.outbox,
            metrics=Metrics(),
        )
        # A second consumer of the same shared subscription, on the same database.
        self.other = GroupCommitter(
            agent="stats",
            store=self.store,
            contract=default_contract(),
            relay=self.outbox,
            metrics=Metrics(),
        )
        handlers = StatsHandlers(load_rules())
        handlers.key = await installation_key(self.store, "stats_activity_ids")
        self.route = Route("activities_log", handlers.log_activity, dedup=activity_identity)
        self.entry = default_contract().entry("activities_log")

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()

    def _delivery(self, idx: int) -> Delivery:
        aid, user, xp = ACTIVITIES[idx]
        req = ActivityLogRequest(
            user_id=user, activity_type="custom", activity_id=aid, custom_xp=xp
        )
        msg = Inbound(topic=self.entry.topic, payload=codec.encode(req), qos=1)
        return Delivery(
            msg=msg,
            entry=self.entry,
            params={},
            route=self.route,
            payload=req,
            trace_id=uuid.uuid4().hex,
        )

    def _commit(self, idxs: list[int], consumer: GroupCommitter | None = None) -> None:
        async def go() -> None:
            batch = [self._delivery(i) for i in idxs]
            await (consumer or self.committer)._commit_with_retries(batch)
            for i, d in zip(idxs, batch, strict=True):
                outcome = d.future.result()
                assert outcome.error is None, outcome.error
                aid, user, xp = ACTIVITIES[i]
                self.accepted[aid] = (user, sum(xp.values()))

        self.loop.run_until_complete(self._in_loop(go))

    async def _in_loop(self, fn: Callable[[], Awaitable[None]]) -> None:
        # Deliveries create futures on the running loop.
        await fn()

    @rule(idx=st.integers(0, len(ACTIVITIES) - 1))
    def deliver(self, idx: int) -> None:
        self._commit([idx])

    @rule(idxs=st.lists(st.integers(0, len(ACTIVITIES) - 1), min_size=2, max_size=8))
    def deliver_batch_shuffled_with_duplicates(self, idxs: list[int]) -> None:
        """One group commit holding several users, in any order, with repeats."""
        self._commit(idxs)

    @rule(idxs=st.lists(st.integers(0, len(ACTIVITIES) - 1), min_size=1, max_size=6))
    def shared_subscription_split(self, idxs: list[int]) -> None:
        """The broker hands messages (and redeliveries) to two consumers of one group; they
        commit concurrently against the same database."""

        async def go() -> None:
            a = [self._delivery(i) for i in idxs]
            b = [self._delivery(i) for i in reversed(idxs)]
            await asyncio.gather(
                self.committer._commit_with_retries(a), self.other._commit_with_retries(b)
            )
            for i, d in zip(idxs, a, strict=True):
                assert d.future.result().error is None
                aid, user, xp = ACTIVITIES[i]
                self.accepted[aid] = (user, sum(xp.values()))

        self.loop.run_until_complete(go())

    @rule(idx=st.integers(0, len(ACTIVITIES) - 1))
    def crash_between_commit_and_ack(self, idx: int) -> None:
        """Committed, acknowledgement lost: the broker redelivers the same message."""
        self._commit([idx])
        self._commit([idx])

    @rule(idx=st.integers(0, len(ACTIVITIES) - 1))
    def crash_before_commit(self, idx: int) -> None:
        """The process dies inside the transaction: nothing is committed, then redelivery."""

        async def go() -> None:
            with_error = False
            try:
                async with self.store.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO mesh_inbox (key, topic_key, created_at) VALUES (?, ?, ?)",
                        f"activity:{ACTIVITIES[idx][0]}x",
                        "activities_log",
                        "now",
                    )
                    raise KeyboardInterrupt  # stands for SIGKILL mid-transaction
            except KeyboardInterrupt:
                with_error = True
            assert with_error

        self.loop.run_until_complete(go())
        self._commit([idx])

    @rule(twice=st.booleans())
    def relay(self, twice: bool) -> None:
        """The relay publishes unsent records; `twice` = crash after PUBACK, before marking."""

        async def go() -> None:
            await self.outbox.sweep()
            queue = self.outbox._queue
            records = []
            while not queue.empty():
                records.append(queue.get_nowait())
                queue.task_done()
            for rec in records:
                self.published.append(rec)
                if twice:
                    self.published.append(rec)
            async with self.store.transaction() as tx:
                for rec in records:
                    await tx.execute("UPDATE mesh_outbox SET sent_at = 'x' WHERE id = ?", rec.id)
            self.outbox._inflight.clear()

        self.loop.run_until_complete(go())

    @invariant()
    def xp_equals_sum_of_unique_grants(self) -> None:
        async def totals() -> dict[str, int]:
            async with self.store.transaction() as tx:
                rows = await tx.fetchall("SELECT user_id, total_xp FROM stats_characters")
            return {r[0]: int(r[1]) for r in rows}

        got = self.loop.run_until_complete(totals())
        want: dict[str, int] = {}
        for user, xp in self.accepted.values():
            want[user] = want.get(user, 0) + xp
        assert got == want

    @invariant()
    def each_level_up_is_one_event(self) -> None:
        """Distinct level-ups have distinct event ids; a republished record repeats its id, so
        consumers deduplicating by event_id see each level-up exactly once."""

        async def staged() -> list[str]:
            async with self.store.transaction() as tx:
                rows = await tx.fetchall(
                    "SELECT payload FROM mesh_outbox WHERE topic_key = 'levelup'"
                )
            return [codec.decode(r[0].encode(), LevelUp).event_id for r in rows]

        ids = self.loop.run_until_complete(staged())
        assert len(ids) == len(set(ids)), "a level-up was staged twice"
        published = {
            codec.decode(r.payload, LevelUp).event_id
            for r in self.published
            if r.topic_key == "levelup"
        }
        assert published <= set(ids)


MeshProtocol.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMeshProtocol = MeshProtocol.TestCase
