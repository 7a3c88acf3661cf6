"""Requests with end-to-end receipts: a PUBACK is not durability.

A state-changing message to another agent is written here in the sender's transaction and kept
until the receiver's reply (the receipt) has been stored. Mosquitto acknowledges a publish once it
holds it in memory; a broker crash, or a full subscriber queue, can still lose it. So the relay
sends the request (MQTT v5 response topic + correlation data), and a record without a receipt is
sent again, with exponential backoff, after a timeout, after a reconnect, and by the periodic
reconciliation sweep. The receiver deduplicates, so every resend is harmless. A circuit breaker
stops the resends while the peer does not answer at all, probing it now and then.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from mesh import codec
from mesh.backoff import Backoff, delay_for
from mesh.circuit import CircuitBreaker
from mesh.contract import Contract
from mesh.errors import ContractError, MeshError
from mesh.metrics import Metrics
from mesh.rpc import Requester
from mesh.schemas import ErrorInfo, ErrorReply
from mesh.store import Migration, Store, Tx
from mesh.store.errors import is_transient
from mesh.supervise import Supervisor

log = logging.getLogger("mesh.receipts")

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS mesh_receipts ("
            " id TEXT PRIMARY KEY, topic_key TEXT NOT NULL, topic TEXT NOT NULL,"
            " payload TEXT NOT NULL, trace_id TEXT, created_at TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION NOT NULL,"
            " receipt TEXT, receipt_at TEXT)",
            "CREATE INDEX IF NOT EXISTS mesh_receipts_open ON mesh_receipts"
            " (receipt_at, next_attempt_at)",
        ),
    ),
)


def is_transient_reply(reply: Any) -> bool:
    """A reply that is no answer yet: an error the responder marks transient (or a bug's
    internal_error). Only a refusal (validation, unknown type, not found) is final."""
    error = getattr(reply, "error", None)
    if getattr(reply, "success", True) or error is None:
        return False
    return bool(error.transient or error.code == "internal_error")


class ReceiptRecord(msgspec.Struct, kw_only=True):
    """One request waiting for its receipt, as a row of `mesh_receipts`."""

    id: str
    topic_key: str
    topic: str
    payload: bytes
    trace_id: str | None
    created_at: str
    attempts: int = 0


OnReceipt = Callable[[Tx, ReceiptRecord, Any], Awaitable[None]]
AfterReceipt = Callable[[ReceiptRecord, Any], Awaitable[None]]
# A receipt whose hook failed for good: (record, reply, code, message) -> a dead letter.
OnDead = Callable[[ReceiptRecord, Any, str, str], Awaitable[None]]
HOOK_FAILED = "receipt_hook_failed"
SEND_FAILED = "receipt_send_failed"
POISON_TRIES = 5  # transient failures of one batch, the database answering, before isolating


class ReceiptOutbox:
    """Requests kept from the sender's transaction and resent until their receipt is stored."""

    def __init__(
        self,
        *,
        agent: str,
        store: Store,
        requester: Requester,
        contract: Contract,
        metrics: Metrics,
        breaker: CircuitBreaker | None = None,
        max_inflight: int = 256,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.agent = agent
        self._store = store
        self._requester = requester
        self._contract = contract
        self._metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self._sem = asyncio.Semaphore(max_inflight)
        self._base = base_backoff_s
        self._max = max_backoff_s
        self._sweep_interval = sweep_interval_s
        self._inflight: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.supervisor = Supervisor()
        self._wake = asyncio.Event()
        self.on_receipt: OnReceipt | None = None  # in the receipt's transaction
        self.after_receipt: AfterReceipt | None = None  # after its commit
        self.on_stored: Callable[[], None] | None = None  # after each commit of receipts
        self.on_dead: OnDead | None = None  # a receipt whose hook failed for good
        self._resend_all = False
        # Receipts arriving together are stored in one transaction (as the inbox does).
        self._to_store: list[tuple[ReceiptRecord, Any]] = []
        self._store_wake = asyncio.Event()
        # The latest receipts, so `wait` needs no database read on the fast path.
        self._recent: collections.OrderedDict[str, Any] = collections.OrderedDict()

    # -- staging (inside the sender's transaction) ----------------------------------------------

    async def stage(
        self, tx: Tx, key: str, payload: Any, *, record_id: str, trace_id: str | None, **params: str
    ) -> ReceiptRecord:
        entry = self._contract.entry(key)
        if entry.reply_schema is None:
            raise ContractError(f"{key!r} has no reply schema: it cannot carry a receipt")
        _, topic = self._contract.resolve(self.agent, key, **params)
        rec = ReceiptRecord(
            id=record_id,
            topic_key=key,
            topic=topic,
            payload=codec.encode(payload),
            trace_id=trace_id,
            created_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        tx.defer(
            "INSERT INTO mesh_receipts (id, topic_key, topic, payload, trace_id, created_at,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rec.id,
            key,
            rec.topic,
            rec.payload.decode(),
            trace_id,
            rec.created_at,
            0.0,
        )
        return rec

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, supervisor: Supervisor | None = None) -> None:
        if supervisor is not None:
            self.supervisor = supervisor
        self.supervisor.register("receipts-send")
        self.supervisor.start("receipts-sweep", self._sweep_loop)
        self.supervisor.start("receipts-store", self._store_loop)

    async def stop(self) -> None:
        await self.supervisor.stop(5, "receipts-sweep", "receipts-store")
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._to_store:  # answered but not stored yet: store them, else they are resent
            try:
                async with asyncio.timeout(5):
                    await self._store_batch(self._to_store)
                self._to_store = []
            except Exception as exc:
                log.warning(
                    "%d receipts not stored at stop (resent after restart): %s",
                    len(self._to_store),
                    exc,
                )

    def submit(self, records: list[ReceiptRecord]) -> None:
        """Send records that were just committed, right away."""
        for rec in records:
            self._send_soon(rec)

    def reconnected(self) -> None:
        """The broker is back: what waits for a receipt is due now."""
        self.breaker.reset()
        self._resend_all = True
        self._wake.set()

    async def wait(self, record_id: str, timeout: float) -> Any | None:
        """The receipt of `record_id` if it comes within `timeout`, else None."""
        if record_id in self._recent:  # stored already (no await between check and waiter)
            return self._recent[record_id]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(record_id, []).append(fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            # Stored long ago and forgotten by the recent list? The database knows.
            return await self.receipt_of(record_id)
        finally:
            waiters = self._waiters.get(record_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(record_id, None)

    async def receipt_of(self, record_id: str) -> Any | None:
        async with self._store.read() as tx:
            row = await tx.fetchone(
                "SELECT topic_key, receipt FROM mesh_receipts WHERE id = ?", record_id
            )
        if row is None or row[1] is None:
            return None
        return codec.decode(row[1].encode(), self._contract.entry(row[0]).reply_type)

    async def pending(self) -> tuple[int, float]:
        """(records without a receipt, age in seconds of the oldest)."""
        return await self._store.backlog("mesh_receipts", "receipt_at IS NULL")

    # -- sending --------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Reconciliation: send every due record without a receipt; returns how many."""
        due_before = 1e18 if self._resend_all else time.time()
        self._resend_all = False
        async with self._store.read() as tx:
            rows = await tx.fetchall(
                "SELECT id, topic_key, topic, payload, trace_id, created_at, attempts"
                " FROM mesh_receipts WHERE receipt_at IS NULL AND next_attempt_at <= ?"
                " ORDER BY created_at LIMIT 2000",
                due_before,
            )
        n = 0
        for r in rows:
            if r[0] in self._inflight:
                continue
            self._send_soon(
                ReceiptRecord(
                    id=r[0],
                    topic_key=r[1],
                    topic=r[2],
                    payload=r[3].encode(),
                    trace_id=r[4],
                    created_at=r[5],
                    attempts=int(r[6]),
                )
            )
            n += 1
        return n

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
                count, age = await self.pending()
                self._metrics.receipts_pending.set(count)
                self._metrics.receipts_oldest_age.set(age)
                self.supervisor.ok("receipts-sweep")
            except Exception as exc:
                self.supervisor.failed("receipts-sweep", exc)
            try:
                async with asyncio.timeout(self._sweep_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _send_soon(self, rec: ReceiptRecord) -> None:
        if rec.id in self._inflight:
            return
        self._inflight.add(rec.id)
        task = asyncio.create_task(self._send(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, rec: ReceiptRecord) -> None:
        handed_over = False
        try:
            if rec.attempts > 0 and not self.breaker.allow():
                return  # retries wait until the circuit half-opens; first sends always go
            async with self._sem:
                entry = self._contract.entry(rec.topic_key)
                payload = codec.decode(rec.payload, entry.schema_type)
                try:
                    reply = await self._requester.request(
                        rec.topic_key,
                        payload,
                        trace_id=rec.trace_id,
                        params=(self._contract.match(rec.topic) or (None, {}))[1],
                    )
                except MeshError as exc:
                    self.breaker.failure()
                    await self._retry_later(rec, exc)
                    return
            self.breaker.success()
            if is_transient_reply(reply):
                # The peer answered but could not do it now (its database, a bug): like a
                # timeout, this is no receipt; the record stays pending and is sent again.
                self._metrics.receipts_transient.labels(rec.topic_key).inc()
                await self._retry_later(rec, RuntimeError(f"transient error: {reply.error.code}"))
                return
            self._to_store.append((rec, reply))  # in flight until stored
            handed_over = True
            self.supervisor.ok("receipts-send")
            self._store_wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not the peer, not the connection: this record's own
            self.supervisor.failed("receipts-send", exc)
            try:
                if rec.attempts + 1 >= POISON_TRIES:
                    await self._give_up(rec, exc)
                else:
                    await self._retry_later(rec, exc)
            except Exception as again:
                log.warning("could not postpone %s: %s", rec.id, again)
        finally:
            if not handed_over:
                self._inflight.discard(rec.id)

    async def _retry_later(self, rec: ReceiptRecord, exc: Exception) -> None:
        delay = delay_for(rec.attempts, self._base, self._max)
        log.warning(
            "no receipt for %s %s (%s); attempt %d, retry in %.1fs",
            rec.topic_key,
            rec.id,
            exc,
            rec.attempts + 1,
            delay,
        )
        async with self._store.transaction() as tx:
            await tx.execute(
                "UPDATE mesh_receipts SET attempts = attempts + 1, next_attempt_at = ?"
                " WHERE id = ?",
                time.time() + delay,
                rec.id,
            )

    async def _store_loop(self) -> None:
        """Store every receipt that arrived since the last commit, in one transaction; never
        dies and never blocks: a database outage keeps them queued and retries; a receipt
        whose hook fails for another reason (or keeps failing while the database answers) is
        stored without its hook's writes and dead-lettered, and the others go on."""
        backoff = Backoff(0.05, 5.0)
        tries = 0
        while True:
            await self._store_wake.wait()
            self._store_wake.clear()
            batch, self._to_store = self._to_store, []
            if not batch:
                continue
            try:
                isolate = tries >= POISON_TRIES and await self._store.writable()
                fresh, dead = await self._store_batch(batch, isolate=isolate)
            except asyncio.CancelledError:
                self._to_store[:0] = batch
                raise
            except Exception as exc:
                self.supervisor.failed("receipts-store", exc)
                tries = POISON_TRIES if not is_transient(exc) else tries + 1
                self._to_store[:0] = batch
                await backoff.sleep()
                self._store_wake.set()
                continue
            tries = 0
            backoff.reset()
            self.supervisor.ok("receipts-store")
            await self._stored(batch, fresh, dead)

    async def _stored(
        self,
        batch: list[tuple[ReceiptRecord, Any]],
        fresh: list[tuple[ReceiptRecord, Any]],
        dead: list[tuple[ReceiptRecord, Any, Exception]],
    ) -> None:
        for rec, _ in batch:
            self._inflight.discard(rec.id)
        if fresh and self.on_stored is not None:
            self.on_stored()
        for rec, reply, exc in dead:
            await self._dead(rec, reply, f"on_receipt failed: {type(exc).__name__}: {exc}")
        failed = {rec.id for rec, _, _ in dead}
        for rec, reply in fresh:
            self._remember(rec.id, reply)
            if self.after_receipt is not None and rec.id not in failed:
                try:
                    await self.after_receipt(rec, reply)
                except Exception as exc:
                    await self._dead(
                        rec, reply, f"after_receipt failed: {type(exc).__name__}: {exc}"
                    )
            for fut in self._waiters.pop(rec.id, []):
                if not fut.done():
                    fut.set_result(reply)

    async def _give_up(self, rec: ReceiptRecord, exc: Exception) -> None:
        """A record that cannot even be sent (its stored payload no longer decodes, its key
        left the contract), try after try: it gets an error reply as its receipt (so nobody
        waits for it) and is dead-lettered; the others go on."""
        message = f"not sent after {rec.attempts + 1} tries: {type(exc).__name__}: {exc}"
        reply = ErrorReply(error=ErrorInfo(code=SEND_FAILED, message=message[:1000]))
        async with self._store.transaction() as tx:
            await tx.execute(
                "UPDATE mesh_receipts SET receipt = ?, receipt_at = ?, attempts = attempts + 1"
                " WHERE id = ? AND receipt_at IS NULL",
                codec.encode(reply).decode(),
                dt.datetime.now(dt.UTC).isoformat(),
                rec.id,
            )
        self._remember(rec.id, reply)
        for fut in self._waiters.pop(rec.id, []):
            if not fut.done():
                fut.set_result(reply)
        self.supervisor.ok("receipts-send")  # done with: dead-lettered
        await self._dead(rec, reply, message, code=SEND_FAILED, counted=True)

    async def _dead(
        self,
        rec: ReceiptRecord,
        reply: Any,
        message: str,
        *,
        code: str = HOOK_FAILED,
        counted: bool = False,
    ) -> None:
        """A receipt hook failed for good: counted, dead-lettered; the receipt stays stored."""
        if not counted:
            failure = RuntimeError(f"{rec.id}: {message}")
            self.supervisor.failed("receipts-store", failure, cycle=False)
        if self.on_dead is None:
            return
        try:
            await self.on_dead(rec, reply, code, message)
        except Exception as exc:
            log.error("could not dead-letter receipt %s: %s", rec.id, exc)

    async def _store_batch(
        self, batch: list[tuple[ReceiptRecord, Any]], *, isolate: bool = False
    ) -> tuple[list[tuple[ReceiptRecord, Any]], list[tuple[ReceiptRecord, Any, Exception]]]:
        """The receipts of `batch` that were not stored before (a resend's second answer is),
        and those whose `on_receipt` failed (only with `isolate`: each hook in a savepoint,
        rolled back alone, the receipt stored all the same)."""
        fresh = []
        dead: list[tuple[ReceiptRecord, Any, Exception]] = []
        now = dt.datetime.now(dt.UTC).isoformat()
        async with self._store.transaction() as tx:
            for rec, reply in batch:
                first = await tx.execute(
                    "UPDATE mesh_receipts SET receipt = ?, receipt_at = ?,"
                    " attempts = attempts + 1 WHERE id = ? AND receipt_at IS NULL",
                    codec.encode(reply).decode(),
                    now,
                    rec.id,
                )
                if not first:
                    continue
                fresh.append((rec, reply))
                if self.on_receipt is None:
                    continue
                if not isolate:
                    await self.on_receipt(tx, rec, reply)
                    continue
                try:
                    async with tx.savepoint():
                        await self.on_receipt(tx, rec, reply)
                except Exception as exc:
                    dead.append((rec, reply, exc))
        return fresh, dead

    def _remember(self, record_id: str, reply: Any, keep: int = 10_000) -> None:
        self._recent[record_id] = reply
        while len(self._recent) > keep:
            self._recent.popitem(last=False)
