"""Idempotent consumer with group commit.

Decoded messages queue up; one writer takes everything that queued while the previous commit ran
(no fixed wait), runs every message's handler in one transaction, and commits once. Only then
are the messages' futures resolved, so the MQTT acknowledgement and the reply follow the commit.
A message whose dedup key is already in `mesh_inbox` is answered with the stored reply and
changes nothing.

Failures: when a handler of the batch refuses its message (HandlerError) or fails (a bug), the
transaction is rolled back and the batch runs again with a savepoint per message, so only that
message becomes an error outcome (dead letter + error reply); the all-good batch, the common
case, needs no savepoints. A database outage keeps the batch un-acknowledged and retries it with
backoff for as long as it lasts; other transient errors (deadlock, busy) retry the batch, then
each message alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from mesh import codec
from mesh.backoff import Backoff
from mesh.contract import Contract, TopicEntry
from mesh.errors import DecodeError, HandlerError
from mesh.handler import Context, Route
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord, OutboxRelay
from mesh.receipts import ReceiptOutbox, ReceiptRecord
from mesh.schemas import ErrorInfo, Reply
from mesh.store import Migration, Store
from mesh.store.errors import cause_of, is_transient
from mesh.transport import Inbound

log = logging.getLogger("mesh.inbox")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_inbox ("
            " key TEXT PRIMARY KEY, topic_key TEXT NOT NULL, reply TEXT,"
            " created_at TEXT NOT NULL)",
        ),
    ),
)


class _HandlerFailed(Exception):
    """A handler failed in a batch run without savepoints: run it again, isolated."""


class Outcome(msgspec.Struct, kw_only=True):
    reply: Reply | None = None
    duplicate: bool = False
    error: ErrorInfo | None = None


class Delivery:
    __slots__ = ("entry", "future", "msg", "params", "payload", "received", "route", "trace_id")

    def __init__(
        self,
        *,
        msg: Inbound,
        entry: TopicEntry,
        params: dict[str, str],
        route: Route,
        payload: Any,
        trace_id: str,
    ) -> None:
        self.msg = msg
        self.entry = entry
        self.params = params
        self.route = route
        self.payload = payload
        self.trace_id = trace_id
        self.received = time.perf_counter()
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()


DERIVED_PREFIXES = ("req:", "pub:")


def derived_key(topic_key: str, msg: Inbound, payload: Any) -> str:
    """The dedup key of a state-changing message that names none of its own.

    - a request with correlation data: the requester's (response topic, correlation data), so
      a retry of the same request is the same, and two requests are two;
    - a request with a response topic but no correlation data (mosquitto_rr's default), or a
      bare publish: the canonical payload (its decoded value re-encoded, so key order and
      spacing do not matter), with the response topic when there is one.

    The trade-off: two identical keyless messages within the keyless window (10 minutes by
    default, LIFEOPS_KEYLESS_WINDOW_S) count once: a retry cannot be told from a second
    identical activity. Later, the same message counts again unless the broker marks it a
    redelivery (DUP), which a redelivery after a crash always is. Give each activity a
    `source_ref` (or an `activity_id`) when the same activity really happens twice.
    """
    h = hashlib.sha256()
    if msg.response_topic and msg.correlation_data:
        h.update(msg.response_topic.encode() + b"\x00" + msg.correlation_data)
        return f"req:{topic_key}:{h.hexdigest()}"
    h.update(codec.encode(payload))
    if msg.response_topic:
        h.update(b"\x00" + msg.response_topic.encode())
    return f"pub:{topic_key}:{h.hexdigest()}"


def _parse_failpoint(failpoint: str | None) -> int | None:
    if not failpoint:
        return None
    name, _, arg = failpoint.partition(":")
    if name != "exit_after_commit" or not arg.isdigit():
        raise ValueError(f"unknown failpoint {failpoint!r} (known: exit_after_commit:N)")
    return int(arg)


class GroupCommitter:
    def __init__(
        self,
        *,
        agent: str,
        store: Store,
        contract: Contract,
        relay: OutboxRelay,
        metrics: Metrics,
        batch_max: int = 512,
        failpoint: str | None = None,
        receipts: ReceiptOutbox | None = None,
        on_state_changed: Callable[[], None] | None = None,
        keyless_window_s: float = 600.0,
    ) -> None:
        self._agent = agent
        self._keyless_window = dt.timedelta(seconds=keyless_window_s)
        self._store = store
        self._contract = contract
        self._relay = relay
        self._metrics = metrics
        self._batch_max = batch_max
        self._receipts = receipts
        self._on_state_changed = on_state_changed
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._exit_after = _parse_failpoint(failpoint)
        self._commits = 0
        # Why commits cannot go through right now (database away or full), None when they can.
        self.trouble: str | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
        while not self._queue.empty():
            d = self._queue.get_nowait()
            if not d.future.done():
                d.future.cancel()

    async def process(self, delivery: Delivery) -> Outcome:
        self._queue.put_nowait(delivery)
        return await delivery.future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._batch_max:
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_with_retries(batch)
            except asyncio.CancelledError:
                for d in batch:
                    if not d.future.done():
                        d.future.cancel()
                raise
            except Exception as exc:
                # The writer must never die: every later message would wait forever.
                log.exception("group commit failed for %d messages", len(batch))
                err = ErrorInfo(
                    code="internal_error", message=f"commit failed: {exc}", transient=True
                )
                for d in batch:
                    if not d.future.done():
                        d.future.set_result(Outcome(error=err))

    async def _commit_with_retries(self, batch: list[Delivery]) -> None:
        """Commit `batch`, whatever it takes: a database outage or exhaustion (disk full,
        read-only, cancelled) holds the messages un-acknowledged and retries until it is over
        (`trouble` says why meanwhile); conflicts retry, then message by message; a failure of
        the machinery itself retries a few times, then answers internal_error (transient)."""
        backoff = Backoff(0.05, 5.0)
        failures = 0
        isolate = False  # savepoints per message only once a handler of the batch has failed
        while True:
            try:
                outcomes, records, receipts = await self._commit(batch, isolate=isolate)
                break
            except _HandlerFailed:
                isolate = True  # the transaction rolled back; again, each message on its own
                continue
            except Exception as exc:
                cause = cause_of(exc)
                if cause in ("outage", "exhausted"):
                    self._hold(cause, exc, len(batch))
                else:
                    failures += 1
                    if failures >= 3 and len(batch) > 1:
                        for d in batch:
                            await self._commit_with_retries([d])
                        return
                    if failures >= 5:
                        log.error("commit of %s failed for good: %s", batch[0].entry.key, exc)
                        err = ErrorInfo(
                            code="internal_error", message=f"database error: {exc}", transient=True
                        )
                        outcomes, records, receipts = [Outcome(error=err)], [], []
                        break
                    self._metrics.store_retries.labels(cause or "error").inc()
                await backoff.sleep()
        if self.trouble is not None:
            log.warning("database writes again: %d messages held were committed", len(batch))
            self.trouble = None
        self._commits += 1
        if self._exit_after is not None and self._commits >= self._exit_after:
            log.error("failpoint: exiting after commit %d, before acknowledgements", self._commits)
            os._exit(137)
        self._metrics.batch_size.observe(len(batch))
        now = time.perf_counter()
        for d, outcome in zip(batch, outcomes, strict=True):
            self._metrics.handler_seconds.labels(d.entry.key).observe(now - d.received)
            if outcome.duplicate:
                self._metrics.duplicates.labels(d.entry.key).inc()
            if not d.future.done():
                d.future.set_result(outcome)
        self._relay.submit(records)
        if self._receipts is not None and receipts:
            self._receipts.submit(receipts)
        if self._on_state_changed is not None:
            self._on_state_changed()

    def _hold(self, cause: str, exc: BaseException, n: int) -> None:
        if self.trouble is None:
            log.warning("database %s (%s); holding %d messages until it recovers", cause, exc, n)
        self.trouble = f"{cause}: {exc}"
        self._metrics.store_retries.labels(cause).inc()

    async def _commit(
        self, batch: list[Delivery], *, isolate: bool = True
    ) -> tuple[list[Outcome], list[OutboxRecord], list[ReceiptRecord]]:
        """One transaction for the batch. With `isolate`, each message runs in a savepoint and
        a failing handler rolls back only its own message; without, the first failure rolls
        back the whole transaction (_HandlerFailed) and the caller runs the batch isolated:
        the common all-good batch saves two statements per message."""
        outcomes: list[Outcome] = []
        records: list[OutboxRecord] = []
        receipts: list[ReceiptRecord] = []
        async with self._store.transaction() as tx:
            for d in batch:
                ctx = Context(
                    tx=tx,
                    agent=self._agent,
                    contract=self._contract,
                    msg=d.msg,
                    params=d.params,
                    trace_id=d.trace_id,
                    relay=self._relay,
                    receipts=self._receipts,
                )
                try:
                    if isolate:
                        async with tx.savepoint():
                            outcome = await self._handle(ctx, d)
                    else:
                        try:
                            outcome = await self._handle(ctx, d)
                        except Exception as exc:
                            if is_transient(exc):
                                raise
                            raise _HandlerFailed from exc
                except _HandlerFailed:
                    raise
                except (HandlerError, DecodeError) as exc:
                    outcome = Outcome(error=ErrorInfo(code=exc.code, message=exc.message))
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    log.exception("handler for %s failed", d.entry.key)
                    # A bug is not a refusal: the sender may try again (after a fix).
                    outcome = Outcome(
                        error=ErrorInfo(
                            code="internal_error",
                            message=f"{type(exc).__name__}: {exc}",
                            transient=True,
                        )
                    )
                else:
                    records.extend(ctx.staged)
                    receipts.extend(ctx.staged_receipts)
                outcomes.append(outcome)
        return outcomes, records, receipts

    async def _handle(self, ctx: Context, d: Delivery) -> Outcome:
        key = None
        if d.route.dedup is not None:  # a state-changing route: every message claims a key
            key = d.route.dedup(d.payload) or derived_key(d.entry.key, d.msg, d.payload)
        reply_type = d.entry.reply_type
        if key is not None:
            claimed = await ctx.tx.execute(
                "INSERT INTO mesh_inbox (key, topic_key, reply, created_at) VALUES (?, ?, NULL, ?)"
                " ON CONFLICT DO NOTHING",
                key,
                d.entry.key,
                ctx.now.isoformat(),
            )
            if claimed == 0:
                row = await ctx.tx.fetchone(
                    "SELECT reply, created_at FROM mesh_inbox WHERE key = ?", key
                )
                if row and await self._keyless_again(ctx, d, key, row[1]):
                    return await self._run_handler(ctx, d, key)
                reply = None
                if row and row[0] and reply_type is not None:
                    reply = codec.decode(row[0].encode("utf-8"), reply_type)
                    if "duplicate" in reply_type.__struct_fields__:
                        reply = msgspec.structs.replace(reply, duplicate=True)
                return Outcome(reply=reply, duplicate=True)
        return await self._run_handler(ctx, d, key)

    async def _keyless_again(self, ctx: Context, d: Delivery, key: str, claimed_at: str) -> bool:
        """A derived key claimed longer than the keyless window ago, by a message that is not
        a redelivery: an identical keyless message sent anew. It claims the key afresh."""
        if not key.startswith(DERIVED_PREFIXES) or d.msg.dup:
            return False
        if ctx.now - dt.datetime.fromisoformat(claimed_at) < self._keyless_window:
            return False
        await ctx.tx.execute(
            "UPDATE mesh_inbox SET created_at = ?, reply = NULL WHERE key = ?",
            ctx.now.isoformat(),
            key,
        )
        return True

    async def _run_handler(self, ctx: Context, d: Delivery, key: str | None) -> Outcome:
        reply = await d.route.handler(ctx, d.payload)
        if key is not None and reply is not None:
            await ctx.tx.execute(
                "UPDATE mesh_inbox SET reply = ? WHERE key = ?",
                codec.encode(reply).decode("utf-8"),
                key,
            )
        return Outcome(reply=reply)
