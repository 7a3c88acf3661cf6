"""Message handlers of the LifeOps agent; each runs inside the group commit's transaction."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import msgspec

from lifeops_agent import days, repository
from lifeops_agent.history import History, load_many
from lifeops_agent.history import load as load_history
from lifeops_agent.locks import user_lock
from lifeops_agent.oura_days import keep_days
from lifeops_agent.repository import Completion
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
    keyed_uuid,
    state,
)

FUTURE_SLACK = dt.timedelta(minutes=5)


class _Planned(msgspec.Struct):
    """A completion request of a batch, checked and placed on the user's local day."""

    job: Job
    user_id: str
    item: TimelineItem
    moment: dt.datetime
    tzname: str
    day: dt.date
    today: dt.date


def completion_id(key: bytes, user_id: str, item_code: str, day: dt.date) -> str:
    """Deterministic: the same user, item and local day is always the same activity; keyed
    with the installation's key, so no other client can compute (and pre-claim) it."""
    return keyed_uuid(key, f"completion:{user_id}:{item_code}:{day.isoformat()}")


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
        """lifeops/timeline/complete for a whole group commit: the users' settings, histories
        and best streaks read with one query per table, streaks computed in memory (in order,
        so two completions of one user in a batch see each other), every table written once."""
        if self.key is None:
            raise RuntimeError("LifeOps has not started (no installation key)")
        planned = await self._admitted(self._plan(jobs, await self._zones(jobs)))
        if not planned:
            return
        wanted: dict[str, tuple[list[dt.date], dt.date]] = {}
        for p in planned:
            wanted.setdefault(p.user_id, ([], p.today))[0].append(p.day)
        histories = await load_many(jobs[0].ctx.tx, wanted, self.codes)
        done: list[tuple[_Planned, Completion]] = []
        for p in planned:
            history, best = histories[p.user_id]
            prior = history.rows.get((p.item.code, p.day))
            if prior is not None:
                p.job.reply = self._already(prior, best.get(p.item.code, 0), p.item, p.day)
                continue
            activity_id = completion_id(self.key, p.user_id, p.item.code, p.day)
            streak = (history.run_back(p.item.code, p.day - dt.timedelta(days=1)) or 0) + 1
            completion = Completion(p.item.code, p.day, p.moment, activity_id, streak, None, True)
            history.add(completion)
            run = streak + (history.run_forward(p.item.code, p.day) or 0)  # a gap filled joins
            best[p.item.code] = max(best.get(p.item.code, 0), run)
            done.append((p, completion))
            p.job.reply = TimelineCompleteReply(
                item_code=p.item.code,
                date=p.day,
                activity_id=activity_id,
                new_streak=streak,
                best_streak=best[p.item.code],
                xp_pending=True,
                message=f"Completed {p.item.title}",
            )
        await self._write(done, histories)

    async def _zones(self, jobs: list[Job]) -> dict[str, str]:
        users = set()
        for job in jobs:
            with contextlib.suppress(HandlerError):
                users.add(check_user_id(job.payload.user_id))
        return await repository.user_timezones(jobs[0].ctx.tx, sorted(users)) if users else {}

    def _plan(self, jobs: list[Job], zones: dict[str, str]) -> list[_Planned]:
        """Each job checked (a refusal is that job's answer) and placed on its local day."""
        planned = []
        for job in jobs:
            req: TimelineCompleteRequest = job.payload
            try:
                user_id = check_user_id(req.user_id)
                item = self._item(req.item_code)
                moment = self._moment(req, job.ctx.now)
            except HandlerError as exc:
                job.refuse(exc)
                continue
            tzname = zones.get(user_id) or self.default_timezone
            zone = days.zone(tzname)
            day, today = days.local_day(moment, zone), days.local_day(job.ctx.now, zone)
            planned.append(_Planned(job, user_id, item, moment, tzname, day, today))
        return planned

    async def _admitted(self, planned: list[_Planned]) -> list[_Planned]:
        """A user is recorded with their first write; an id that is another stored user's
        spelled differently (Alice for alice, run_club for run-club) is refused."""
        if not planned:
            return planned
        ctx = planned[0].job.ctx
        refused = await self.users.admit(ctx.tx, [p.user_id for p in planned], ctx.now)
        for p in planned:
            if p.user_id in refused:
                p.job.refuse(refusal(p.user_id, refused[p.user_id]))
        return [p for p in planned if p.job.error is None]

    async def _write(
        self,
        done: list[tuple[_Planned, Completion]],
        histories: dict[str, tuple[History, dict[str, int]]],
    ) -> None:
        """Each kind of write for the whole batch in turn, so each is one statement."""
        for p, c in done:
            repository.defer_completion(p.job.ctx.tx, p.user_id, c)
        raised = {(p.user_id, p.item.code): p for p, _ in done}
        for (user_id, code), p in raised.items():
            repository.defer_raise_best(p.job.ctx.tx, user_id, code, histories[user_id][1][code])
        for p, c in done:
            event = completed_event(p.user_id, p.item, c)
            await p.job.ctx.request_with_receipt(
                "activity_completed", event, record_id=c.activity_id
            )
        last = {p.user_id: p for p, _ in done}  # one retained timeline per user, the latest
        for user_id, p in last.items():
            history, best = histories[user_id]
            state = self._day(user_id, p.today, p.today, p.tzname, history, best)
            await p.job.ctx.emit("timeline_state", state, user_id=user_id)

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
        user_id = check_user_id(req.user_id)
        days.zone(req.timezone)
        await self.users.check(ctx.tx, user_id, ctx.now)
        await repository.set_user_timezone(ctx.tx, user_id, req.timezone, ctx.now)
        await self._emit_state(ctx, user_id)
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

    async def _timezone(self, tx: Tx, user_id: str) -> str:
        return await repository.user_timezone(tx, user_id) or self.default_timezone

    async def day_state(
        self, tx: Tx, user_id: str, day: dt.date | None = None, now: dt.datetime | None = None
    ) -> TimelineDay:
        """The user's timeline for `day` (default today), from the history around it."""
        tzname = await self._timezone(tx, user_id)
        today = days.local_day(now or dt.datetime.now(dt.UTC), days.zone(tzname))
        day = day or today
        history, best = await load_history(tx, user_id, day, today, self.codes)
        return self._day(user_id, day, today, tzname, history, best)

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

    async def _emit_state(self, ctx: Context, user_id: str) -> None:
        state = await self.day_state(ctx.tx, user_id, now=ctx.now)
        await ctx.emit("timeline_state", state, user_id=user_id)

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
