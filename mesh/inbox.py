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
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from mesh import claims, codec
from mesh.backoff import Backoff
from mesh.contract import Contract, TopicEntry
from mesh.errors import DecodeError, HandlerError
from mesh.handler import Context, Job, Route
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord, OutboxRelay
from mesh.receipts import ReceiptOutbox, ReceiptRecord
from mesh.schemas import ErrorInfo, Reply
from mesh.store import Migration, Store, Tx
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


POISON_TRIES = 5  # failures of one message alone, the database taking writes, before its verdict
CONFLICT_TRIES = 60  # deadlocks and serialization failures: ~5 min at the capped backoff


class _HandlerFailed(Exception):
    """A handler failed in a batch run without savepoints: run it again, isolated."""


class Outcome(msgspec.Struct, kw_only=True):
    reply: Reply | None = None
    duplicate: bool = False
    error: ErrorInfo | None = None


class Delivery:
    __slots__ = (
        "entry", "future", "msg", "params", "payload", "received", "route", "trace_id", "tries"
    )  # fmt: skip

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
        self.tries = 0  # failures of this message alone while the database took writes
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()


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
        batch_max: int,
        keyless_window_s: float,
        failpoint: str | None = None,
        receipts: ReceiptOutbox | None = None,
        on_state_changed: Callable[[], None] | None = None,
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
        (`trouble` says why meanwhile); conflicts retry, then message by message, until they go
        through (at most CONFLICT_TRIES times); a failure of the machinery itself retries a few
        times, then answers internal_error (transient)."""
        backoff = Backoff(0.05, 5.0)
        failures = 0
        held = 0  # failures with the database away or full (or so the error says)
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
                    held += 1
                    alone = len(batch) == 1
                    if (alone or held >= POISON_TRIES) and await self._store.writable():
                        # The database takes writes, this batch does not go: find which fails.
                        if not alone:
                            for d in batch:
                                await self._commit_with_retries([d])
                            return
                        batch[0].tries += 1
                        if batch[0].tries >= POISON_TRIES:
                            outcomes, records, receipts = [_poison(batch[0], exc)], [], []
                            break
                else:
                    failures += 1
                    if failures >= 3 and len(batch) > 1:
                        for d in batch:
                            await self._commit_with_retries([d])
                        return
                    # A conflict (deadlock, serialization failure) is two transactions meeting:
                    # the other one ends, so retrying goes through, up to a generous bound
                    # (minutes at the capped backoff); anything else gives up after a few.
                    if failures >= (CONFLICT_TRIES if cause == "conflict" else 5):
                        log.error("commit of %s failed for good: %s", batch[0].entry.key, exc)
                        err = ErrorInfo(
                            code="internal_error", message=f"database error: {exc}", transient=True
                        )
                        outcomes, records, receipts = [Outcome(error=err)], [], []
                        break
                    self._metrics.store_retries.labels(cause or "error").inc()
                await backoff.sleep()
        self._settle(batch, outcomes, records, receipts)

    def _settle(
        self,
        batch: list[Delivery],
        outcomes: list[Outcome],
        records: list[OutboxRecord],
        receipts: list[ReceiptRecord],
    ) -> None:
        """The batch is committed: answer its messages, hand over what goes out."""
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
        the common all-good batch saves two statements per message. Messages of a batch-native
        route are handed to it together (without `isolate`)."""
        outcomes: dict[int, Outcome] = {}
        ctxs: dict[int, Context] = {}
        async with self._store.transaction() as tx:
            await tx.lock(_lock_keys(batch))
            for group in _groups(batch, together=not isolate):
                jobs = [(n, self._context(tx, batch[n])) for n in group]
                ctxs.update(jobs)
                if isolate:
                    n, ctx = jobs[0]
                    outcomes[n] = await self._isolated(ctx, batch[n])
                else:
                    try:
                        got = await self._handle_group([(c, batch[n]) for n, c in jobs])
                    except Exception as exc:
                        if is_transient(exc):
                            raise
                        raise _HandlerFailed from exc
                    outcomes.update(zip(group, got, strict=True))
            if not isolate:
                try:
                    await tx.flush()
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    raise _HandlerFailed from exc
        records: list[OutboxRecord] = []
        receipts: list[ReceiptRecord] = []
        for n in range(len(batch)):
            if outcomes[n].error is None:
                records.extend(ctxs[n].staged)
                receipts.extend(ctxs[n].staged_receipts)
        return [outcomes[n] for n in range(len(batch))], records, receipts

    def _context(self, tx: Tx, d: Delivery) -> Context:
        return Context(
            tx=tx,
            agent=self._agent,
            contract=self._contract,
            msg=d.msg,
            params=d.params,
            trace_id=d.trace_id,
            relay=self._relay,
            receipts=self._receipts,
        )

    async def _isolated(self, ctx: Context, d: Delivery) -> Outcome:
        """One message in a savepoint: a refusal or a bug rolls back only its own writes."""
        try:
            async with ctx.tx.savepoint():
                return (await self._handle_group([(ctx, d)]))[0]
        except (HandlerError, DecodeError) as exc:
            return Outcome(error=ErrorInfo(code=exc.code, message=exc.message))
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("handler for %s failed", d.entry.key)
            # A bug is not a refusal: the sender may try again (after a fix).
            return Outcome(
                error=ErrorInfo(
                    code="internal_error", message=f"{type(exc).__name__}: {exc}", transient=True
                )
            )

    async def _handle_group(self, jobs: list[tuple[Context, Delivery]]) -> list[Outcome]:
        """Messages of one route: claim their dedup keys, answer repeats from the inbox, run
        the handler (once for all of a batch-native route), keep the replies."""
        route, entry = jobs[0][1].route, jobs[0][1].entry
        tx, now = jobs[0][0].tx, jobs[0][0].now
        keys = [self._key(d) for _, d in jobs]
        first: dict[str, int] = {}
        for n, key in enumerate(keys):
            if key is not None:
                first.setdefault(key, n)
        run = [n for n, key in enumerate(keys) if key is None]
        out: dict[int, Outcome] = {}
        if first:
            free = await claims.claim_many(tx, list(first), entry.key, now)
            taken = await claims.stored(tx, [k for k in first if k not in free])
            for key, n in first.items():
                if key in free or self._keyless_again(jobs[n][1], key, taken[key][1], now):
                    if key not in free:
                        claims.reclaim(tx, key, now)
                    run.append(n)
                else:
                    out[n] = self._repeat(entry, taken[key][0])
        run.sort()
        for n, outcome in zip(run, await self._execute(route, [jobs[n] for n in run]), strict=True):
            out[n] = outcome
            key = keys[n]
            if key is not None and outcome.error is not None:
                claims.release(tx, key)
            elif key is not None and outcome.reply is not None:
                claims.keep_reply(tx, key, codec.encode(outcome.reply))
        for n, key in enumerate(keys):  # the same key again within the batch
            if n not in out and key is not None:
                out[n] = _again(out[first[key]])
        return [out[n] for n in range(len(jobs))]

    def _key(self, d: Delivery) -> str | None:
        if d.route.dedup is None:  # a query: nothing to claim
            return None
        # a state-changing route: every message claims a key
        return d.route.dedup(d.payload) or claims.derived_key(d.entry.key, d.msg, d.payload)

    async def _execute(self, route: Route, jobs: list[tuple[Context, Delivery]]) -> list[Outcome]:
        if route.batch is None:
            return [Outcome(reply=await route.handler(ctx, d.payload)) for ctx, d in jobs]
        work = [Job(ctx, d.payload) for ctx, d in jobs]
        await route.batch(work)
        out = []
        for job in work:
            if job.error is not None:
                if job.ctx.staged or job.ctx.staged_receipts:
                    raise RuntimeError(f"{route.key}: a refused job staged writes")
                err = ErrorInfo(code=job.error.code, message=job.error.message)
                out.append(Outcome(error=err))
            else:
                out.append(Outcome(reply=job.reply))
        return out

    def _repeat(self, entry: TopicEntry, stored: str | None) -> Outcome:
        """A repeated message: the original reply, marked as a duplicate."""
        reply_type = entry.reply_type
        reply = None
        if stored and reply_type is not None:
            reply = codec.decode(stored.encode("utf-8"), reply_type)
            if "duplicate" in reply_type.__struct_fields__:
                reply = msgspec.structs.replace(reply, duplicate=True)
        return Outcome(reply=reply, duplicate=True)

    def _keyless_again(self, d: Delivery, key: str, claimed_at: str, now: dt.datetime) -> bool:
        """A derived key claimed longer than the keyless window ago, by a message that is not
        a redelivery: an identical keyless message sent anew. It claims the key afresh."""
        if not key.startswith(claims.DERIVED_PREFIXES) or d.msg.dup:
            return False
        return now - dt.datetime.fromisoformat(claimed_at) >= self._keyless_window


def _poison(d: Delivery, exc: BaseException) -> Outcome:
    """A message that kept failing alone while the database took other writes: its error
    says the database is away, but the database answers; it is dead-lettered, not held."""
    log.error("%s failed %d times while the database takes writes: %s", d.entry.key, d.tries, exc)
    message = (
        f"failed {d.tries} times while the database takes other writes: {type(exc).__name__}: {exc}"
    )
    return Outcome(error=ErrorInfo(code="poison_message", message=message[:1000]))


def _lock_keys(batch: list[Delivery]) -> set[str]:
    """Every key the batch's routes lock, taken at once (sorted by Tx.lock) before any handler
    reads: the same order on every agent, whatever routes the batch mixes. A deadlock with
    another agent's rows is a conflict: the batch is retried (_commit_with_retries)."""
    keys: set[str] = set()
    for d in batch:
        if d.route.locks is not None:
            try:
                keys.update(d.route.locks(d.payload))
            except Exception:  # a bug of the route's: its handler still answers the message
                log.exception("lock keys of %s failed", d.entry.key)
    return keys


def _groups(batch: list[Delivery], *, together: bool) -> list[list[int]]:
    """Indexes of the batch to handle together: each message alone, or (without isolation)
    the messages of each batch-native route together, in order of their first message."""
    if not together:
        return [[n] for n in range(len(batch))]
    out: list[list[int]] = []
    by_route: dict[str, list[int]] = {}
    for n, d in enumerate(batch):
        if d.route.batch is None:
            out.append([n])
        elif d.route.key in by_route:
            by_route[d.route.key].append(n)
        else:
            by_route[d.route.key] = [n]
            out.append(by_route[d.route.key])
    return out


def _again(outcome: Outcome) -> Outcome:
    """A repeat of a message earlier in the same batch gets its answer."""
    reply = outcome.reply
    if reply is not None and "duplicate" in type(reply).__struct_fields__:
        reply = msgspec.structs.replace(reply, duplicate=True)
    return Outcome(reply=reply, error=outcome.error, duplicate=True)
