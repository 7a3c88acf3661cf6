"""The handler API: a `Route` per contract key, and the `Context` a handler runs in.

A handler is `async def handle(ctx: Context, payload) -> Reply | None`. It runs inside the group
commit's transaction (`ctx.tx`); what it emits (`ctx.emit`) and the requests it sends with a
receipt (`ctx.request_with_receipt`) are written in that transaction and go out after the
commit. Raising `HandlerError` refuses the message with a code; the runtime answers with an
error reply and a dead letter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from mesh import codec, state
from mesh.contract import Contract
from mesh.dedup import Keyless
from mesh.errors import HandlerError
from mesh.outbox import OutboxRecord, OutboxRelay, stage
from mesh.receipts import ReceiptOutbox, ReceiptRecord
from mesh.schemas import Reply
from mesh.store import Tx
from mesh.transport import Inbound


class Context:
    """What a handler gets: the open transaction, the message, and a way to emit events."""

    def __init__(
        self,
        *,
        tx: Tx,
        agent: str,
        contract: Contract,
        msg: Inbound,
        params: dict[str, str],
        trace_id: str,
        relay: OutboxRelay,
        receipts: ReceiptOutbox | None = None,
    ) -> None:
        self.tx = tx
        self.agent = agent
        self.msg = msg
        self.params = params
        self.trace_id = trace_id
        self.now = dt.datetime.now(dt.UTC)
        self._contract = contract
        self._relay = relay
        self._receipts = receipts
        self.staged: list[OutboxRecord] = []
        self.staged_receipts: list[ReceiptRecord] = []
        self.state_changed = False

    async def emit(self, key: str, payload: Any, **params: str) -> None:
        """Stage an event in this transaction; it is published after the commit."""
        entry, topic = self._contract.resolve(self.agent, key, **params)
        if entry.kind == "state" and entry.retain:
            # Latest value wins: one row per topic, published coalesced after the commit.
            await state.put(
                self.tx,
                topic=topic,
                topic_key=key,
                trace_id=self.trace_id,
                payload=codec.encode_value(payload, entry.format),
            )
            self.state_changed = True
            return
        rec = await stage(
            self.tx,
            topic_key=key,
            topic=topic,
            payload=codec.encode_value(payload, entry.format),
            qos=entry.qos,
            retain=entry.retain,
            trace_id=self.trace_id,
            seq=self._relay.next_seq(),
        )
        self.staged.append(rec)

    async def request_with_receipt(
        self, key: str, payload: Any, *, record_id: str, **params: str
    ) -> None:
        """Stage a request to another agent, kept and resent until its reply is stored."""
        if self._receipts is None:
            raise RuntimeError("this agent has no receipt outbox")
        rec = await self._receipts.stage(
            self.tx, key, payload, record_id=record_id, trace_id=self.trace_id, **params
        )
        self.staged_receipts.append(rec)


class Job:
    """One message of a batch: its context (all of a batch share one transaction), its
    payload, and what the batch handler made of it: a `reply`, or `refuse(...)`."""

    __slots__ = ("ctx", "error", "payload", "reply")

    def __init__(self, ctx: Context, payload: Any) -> None:
        self.ctx = ctx
        self.payload = payload
        self.reply: Reply | None = None
        self.error: HandlerError | None = None

    def refuse(self, exc: HandlerError) -> None:
        self.error = exc


Handler = Callable[["Context", Any], Awaitable[Reply | None]]
BatchHandler = Callable[[list[Job]], Awaitable[None]]
AfterCommit = Callable[[Any, Reply], Awaitable[Reply]]
# A route's own key function, instead of its contract's `dedup` rule: a key, or KEYLESS (an
# empty key or None counts as KEYLESS too).
DedupKey = Callable[[Any], str | Keyless | None]
LockKeys = Callable[[Any], Iterable[str]]


class Route(msgspec.Struct, frozen=True):
    """How an agent handles one contract key."""

    key: str
    handler: Handler
    # None: the contract's `dedup` rule builds the inbox key (mesh/dedup.py), the one source of
    # keys. A function here overrides it (tests, a special case of code outside the contract;
    # `lifeops-mesh doctor` points such routes out).
    dedup: DedupKey | None = None
    # Runs after the commit, before the reply and the acknowledgement (e.g. to wait briefly for
    # a receipt and put its result into the reply).
    after_commit: AfterCommit | None = None
    # Batch-native: every message of a group commit in one call (reads for all of them, then
    # writes; `Tx.defer` makes each table one statement). Refuse a job before writing for it.
    batch: BatchHandler | None = None
    # What the handler reads and then writes what follows from, as lock keys (e.g. the
    # message's user): the runtime locks every key of a group commit's messages, sorted, first
    # thing in its transaction (Tx.lock), so agents sharing the database take turns per key.
    # Called with the decoded payload; it must not raise (a payload it cannot key names none).
    locks: LockKeys | None = None

    @classmethod
    def batched(
        cls,
        key: str,
        batch: BatchHandler,
        *,
        dedup: DedupKey | None = None,
        after_commit: AfterCommit | None = None,
        locks: LockKeys | None = None,
    ) -> Route:
        """A route whose handler is `batch`; one message alone is a batch of one."""

        async def one(ctx: Context, payload: Any) -> Reply | None:
            job = Job(ctx, payload)
            await batch([job])
            if job.error is not None:
                raise job.error
            return job.reply

        return cls(key, one, dedup=dedup, after_commit=after_commit, batch=batch, locks=locks)
