"""Message handlers of the LifeOps agent; each runs inside the group commit's transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from lifeops_agent import days, repository, streaks
from lifeops_agent.history import Completion, History
from lifeops_agent.locks import user_lock
from lifeops_agent.oura_days import keep_days
from lifeops_agent.streaks import completion_id as completion_id
from lifeops_agent.timeline import Timeline, TimelineItem
from lifeops_contract import contract
from lifeops_contract.ids import check_user_id
from lifeops_contract.schemas import (
    ActivityCompleted,
    ActivityLogReply,
    OuraImportReply,
    OuraImportRequest,
    OuraSynced,
    TimelineCompleteReply,
    TimelineCompleteRequest,
    TimelineDay,
    TimelineGetRequest,
    TimelineItemState,
    TimelineReply,
    UserSettingsReply,
    UserSettingsRequest,
)
from lifeops_contract.user_registry import UserRegistry, refusal
from mesh import (
    Context,
    Contract,
    DecodeError,
    ErrorInfo,
    HandlerError,
    Job,
    ReceiptOutbox,
    ReceiptRecord,
    Reply,
    Tx,
    codec,
    state,
)

FUTURE_SLACK = dt.timedelta(minutes=5)


class LifeOpsHandlers:
    def __init__(
        self, timeline: Timeline, default_timezone: str, *, receipt_wait_s: float = 4.0
    ) -> None:
        days.zone(default_timezone)  # fail at startup on a bad default
        self.timeline = timeline
        self.codes = [i.code for i in timeline.items]
        self.default_timezone = default_timezone
        self.receipt_wait_s = receipt_wait_s
        self.receipts: ReceiptOutbox | None = None  # set when the agent starts
        self.peers: dict[str, bool] = {}  # availability of other agents, from <agent>/status
        self.contract: Contract = contract()
        self.key: bytes | None = None  # this installation's key for completion ids (at start)
        self.users = UserRegistry()

    # -- requests -------------------------------------------------------------------------------

    def _item(self, code: str) -> TimelineItem:
        item = self.timeline.by_code.get(code)
        if item is None:
            raise HandlerError(
                "unknown_item",
                f"no timeline item {code[:64]!r} (known: {', '.join(self.timeline.by_code)})",
            )
        return item

    @staticmethod
    def _moment(req: TimelineCompleteRequest, now: dt.datetime) -> dt.datetime:
        """When the item was done: `completed_at` (naive as UTC), never in the future."""
        moment = req.completed_at or now
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        if moment > now + FUTURE_SLACK:
            raise HandlerError(
                "invalid_time", f"completed_at {moment.isoformat()} is in the future"
            )
        return moment

    async def complete(self, jobs: list[Job]) -> None:
        """lifeops/timeline/complete for a whole group commit, as load -> compute -> write:
        one repository call reads the users' settings, registry entries, histories and best
        streaks (one query per table), the streaks are computed in memory (streaks.complete:
        in order, so two completions of one user in a batch see each other), and one call
        writes every table once; then the events and one retained timeline per user."""
        if self.key is None:
            raise RuntimeError("LifeOps has not started (no installation key)")
        asks = self._asks(jobs)
        if not asks:
            return
        tx = jobs[0].ctx.tx
        batch = await repository.load_batch(tx, asks, self.users, self.default_timezone, self.codes)
        for p, holder in batch.refused:
            jobs[p.ask.index].refuse(refusal(p.ask.user_id, holder))
        result = streaks.complete(batch.placed, batch.histories, self.key)
        for o in result.outcomes:
            jobs[o.placed.ask.index].reply = self._answer(o)
        repository.write_batch(tx, result)
        await self._publish(jobs, result, batch.histories)

    def _asks(self, jobs: list[Job]) -> list[streaks.Ask]:
        """Each job checked (a refusal is that job's answer)."""
        asks = []
        for index, job in enumerate(jobs):
            req: TimelineCompleteRequest = job.payload
            try:
                user_id = check_user_id(req.user_id)
                item = self._item(req.item_code)
                moment = self._moment(req, job.ctx.now)
            except HandlerError as exc:
                job.refuse(exc)
                continue
            asks.append(streaks.Ask(index, user_id, item, moment, job.ctx.now))
        return asks

    def _answer(self, o: streaks.Done | streaks.Already) -> TimelineCompleteReply:
        item, day = o.placed.ask.item, o.placed.day
        if isinstance(o, streaks.Already):
            return self._already(o.prior, o.best, item, day)
        return TimelineCompleteReply(
            item_code=item.code,
            date=day,
            activity_id=o.completion.activity_id,
            new_streak=o.completion.streak,
            best_streak=o.best,
            xp_pending=True,
            message=f"Completed {item.title}",
        )

    async def _publish(
        self, jobs: list[Job], result: streaks.Result, histories: streaks.Histories
    ) -> None:
        """Stats is told of each new completion; each user's retained timeline restated once
        (the latest request's today)."""
        for d in result.done:
            ask = d.placed.ask
            event = completed_event(ask.user_id, ask.item, d.completion)
            await jobs[ask.index].ctx.request_with_receipt(
                "activity_completed", event, record_id=d.completion.activity_id
            )
        for user_id, p in result.last.items():
            history, best = histories[user_id]
            state = self._day(user_id, p.today, p.today, p.tzname, history, best)
            await jobs[p.ask.index].ctx.emit("timeline_state", state, user_id=user_id)

    def _already(
        self, prior: Completion, best: int, item: TimelineItem, day: dt.date
    ) -> TimelineCompleteReply:
        reply = self._reply_from(prior, best)
        then = f" ({reply.message} then)" if reply.message else ""
        return msgspec.structs.replace(
            reply,
            success=False,
            message=f"Already completed for {day}{then}: nothing gained now",
            error=ErrorInfo(
                code="already_completed", message=f"{item.title} is already completed for {day}"
            ),
        )

    async def after_complete(self, req: Any, reply: Reply) -> Reply:
        """Wait briefly for Stats' answer so the requester gets the XP in the same reply."""
        assert isinstance(reply, TimelineCompleteReply)
        if not reply.success or not reply.activity_id or self.receipts is None:
            return reply
        if self.peers.get("stats") is False or self.receipts.breaker.state == "open":
            return reply  # Stats is known to be away: do not keep the requester waiting
        receipt = await self.receipts.wait(reply.activity_id, self.receipt_wait_s)
        if receipt is None:
            return reply  # xp_pending: the relay delivers it later
        return merge_receipt(reply, receipt)

    async def get(self, ctx: Context, req: TimelineGetRequest) -> TimelineReply:
        user_id = check_user_id(req.user_id)
        return TimelineReply(timeline=await self.day_state(ctx.tx, user_id, req.date))

    async def settings(self, ctx: Context, req: UserSettingsRequest) -> UserSettingsReply:
        """The user's time zone: admitted, the timeline read as it will be in the new zone,
        the zone written, the timeline restated."""
        user_id = check_user_id(req.user_id)
        days.zone(req.timezone)
        await self.users.check(ctx.tx, user_id, ctx.now)
        loaded = await repository.load_day(
            ctx.tx, user_id, self.codes, self.default_timezone, now=ctx.now, timezone=req.timezone
        )
        state = self._state(user_id, loaded)
        await repository.set_user_timezone(ctx.tx, user_id, req.timezone, ctx.now)
        await ctx.emit("timeline_state", state, user_id=user_id)
        return UserSettingsReply(user_id=user_id, timezone=req.timezone)

    async def oura_import(self, ctx: Context, req: OuraImportRequest) -> OuraImportReply:
        user_id = check_user_id(req.user_id)

        async def send(event: OuraSynced, record_id: str) -> None:
            await ctx.request_with_receipt("oura_synced", event, record_id=record_id)

        return await keep_days(ctx.tx, user_id, req.days, ctx.now, send)

    async def peer_status(self, agent: str, online: bool) -> None:
        """Availability of the other agents; when Stats comes back, resend what waits now."""
        self.peers[agent] = online
        if agent == "stats" and online and self.receipts is not None:
            self.receipts.reconnected()

    # -- receipts -------------------------------------------------------------------------------

    async def on_receipt(self, tx: Tx, rec: ReceiptRecord, reply: Any) -> None:
        """Stats answered: store its result, and restate the retained timeline (the XP is no
        longer pending), in the receipt's transaction."""
        if rec.topic_key != "activity_completed":
            return
        done = await repository.store_result(tx, rec.id, codec.encode(reply).decode())
        if done is None:
            return
        user_id, code, day = done
        # The retained timeline is read, then written: a completion on another agent writes
        # it too, under this lock.
        await tx.lock([user_lock(user_id)])
        topic = self.contract.topic("timeline_state", user_id=user_id)
        # The retained timeline was restated by the completion itself (same transaction order):
        # only its item's xp_pending flips. Rebuilt from the database when it is not there.
        staged = await state.read(tx, topic)
        current = codec.decode(staged, TimelineDay) if staged else None
        if current is not None and current.date != day:
            return  # the retained day is another one: nothing it shows changed
        item = next((i for i in current.items if i.code == code), None) if current else None
        if current is None or item is None:
            current = await self.day_state(tx, user_id)
        else:
            item.xp_pending = False
        await state.put(
            tx,
            topic=topic,
            topic_key="timeline_state",
            payload=codec.encode(current),
            trace_id=rec.trace_id,
        )

    # -- state ----------------------------------------------------------------------------------

    async def day_state(
        self, tx: Tx, user_id: str, day: dt.date | None = None, now: dt.datetime | None = None
    ) -> TimelineDay:
        """The user's timeline for `day` (default today), from the history around it."""
        loaded = await repository.load_day(
            tx, user_id, self.codes, self.default_timezone, day=day, now=now
        )
        return self._state(user_id, loaded)

    def _state(self, user_id: str, d: repository.DayState) -> TimelineDay:
        return self._day(user_id, d.day, d.today, d.tzname, d.history, d.best)

    def _day(
        self,
        user_id: str,
        day: dt.date,
        today: dt.date,
        tzname: str,
        history: History,
        best: dict[str, int],
    ) -> TimelineDay:
        items = []
        for item in self.timeline.items:
            row = history.rows.get((item.code, day))
            current = (
                history.current(item.code, today)
                if day == today
                else history.run_back(item.code, day)
            )
            items.append(
                TimelineItemState(
                    code=item.code,
                    title=item.title,
                    activity_type=item.reported_type(),
                    xp=dict(item.xp),
                    window=item.window,
                    done=row is not None,
                    completed_at=row.completed_at if row else None,
                    current_streak=current or 0,
                    best_streak=best.get(item.code, 0),
                    xp_pending=row.xp_pending if row else False,
                )
            )
        return TimelineDay(
            user_id=user_id,
            date=day,
            timezone=tzname,
            items=items,
            done=sum(i.done for i in items),
            total=len(items),
        )

    async def refresh_states(self, tx: Tx) -> int:
        """After a timeline file change: restate every retained timeline that lists other items,
        so subscribers (the HA bridge) see new items appear and removed ones disappear."""
        rows = await state.read_all(tx, "timeline_state")
        wanted = [_signature(i) for i in self.timeline.items]
        stale: list[tuple[str, str, str | None]] = []
        for topic, payload, trace_id in rows:
            try:
                day = codec.decode(payload, TimelineDay)
            except DecodeError:
                day = None
            found = self.contract.match(topic)
            if found is None or (day is not None and [_signature(i) for i in day.items] == wanted):
                continue
            stale.append((topic, found[1]["user_id"], trace_id))
        # Rebuilt from what is stored, under the users' locks (all at once: one order).
        await tx.lock(user_lock(user_id) for _, user_id, _ in stale)
        changed = 0
        for topic, user_id, trace_id in stale:
            fresh = await self.day_state(tx, user_id)
            await state.put(
                tx,
                topic=topic,
                topic_key="timeline_state",
                payload=codec.encode(fresh),
                trace_id=trace_id,
            )
            changed += 1
        return changed

    async def backfill_best_streaks(self, tx: Tx) -> int:
        """Once, after the upgrade that keeps best streaks: compute them from the history."""
        if await repository.has_best_streaks(tx):
            return 0
        by_run: dict[tuple[str, str], set[dt.date]] = {}
        for user_id, c in await repository.all_completions(tx):
            by_run.setdefault((user_id, c.item_code), set()).add(c.day)
        for (user_id, code), done in by_run.items():
            repository.defer_raise_best(tx, user_id, code, days.longest_run(done))
        return len(by_run)

    def _reply_from(self, c: Completion, best: int) -> TimelineCompleteReply:
        reply = TimelineCompleteReply(
            item_code=c.item_code,
            date=c.day,
            activity_id=c.activity_id,
            new_streak=c.streak,
            best_streak=best,
            xp_pending=c.xp_pending,
        )
        if c.result:
            reply = merge_receipt(reply, codec.decode(c.result.encode(), ActivityLogReply))
        return reply


def completed_event(user_id: str, item: TimelineItem, c: Completion) -> ActivityCompleted:
    """What Stats is told of a completion (its activity id is the completion's)."""
    return ActivityCompleted(
        activity_id=c.activity_id,
        user_id=user_id,
        activity_type=item.reported_type(),
        source="lifeops",
        source_ref=f"{user_id}:{item.code}:{c.day.isoformat()}",
        activity_time=c.completed_at,
        custom_xp=dict(item.xp),
        streak=c.streak,
        item_code=item.code,
    )


def merge_receipt(reply: TimelineCompleteReply, receipt: ActivityLogReply) -> TimelineCompleteReply:
    if not receipt.success:
        err = receipt.error.message if receipt.error else "unknown error"
        return msgspec.structs.replace(
            reply, xp_pending=False, message=f"{reply.message}; Stats refused the XP: {err}"
        )
    return msgspec.structs.replace(
        reply,
        xp_pending=False,
        xp_granted=receipt.xp_granted,
        stat_level_ups=receipt.stat_level_ups,
        character_level_up=receipt.character_level_up,
        message=f"{reply.message}. {receipt.message}" if reply.message else receipt.message,
    )


def _signature(item: TimelineItem | TimelineItemState) -> tuple[object, ...]:
    window = item.window
    activity_type = item.reported_type() if isinstance(item, TimelineItem) else item.activity_type
    return (item.code, item.title, window, sorted(item.xp.items()), activity_type)
