"""Message handlers of the Stats agent; each runs inside the group commit's transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec

from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityCompleted,
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    EventsRecentReply,
    EventsRecentRequest,
    OuraSynced,
)
from lifeops_contract.user_registry import UserRegistry, refusal
from mesh import Context, HandlerError, Job, NotFound
from stats_agent import batch, game, ledger, repository
from stats_agent.rules import Rules


def activity_identity(req: ActivityLogRequest) -> str | None:
    """The dedup key: activity_id when given, else (source, source_ref); None when neither."""
    if req.activity_id:
        return f"activity:{req.activity_id}"
    if req.source_ref:
        return f"activity:{req.source}:{req.source_ref}"
    return None


def character_lock(payload: ActivityLogRequest | ActivityCompleted | OuraSynced) -> list[str]:
    """The lock key of a message that grants XP: its user's character. Every read-then-write
    of a grant ends there (an Oura day's earlier versions, the totals before an award or a
    level-up, the achievements a user has, the retained sheet), so the user is the key:
    agents sharing the database take turns per user (mesh Route.locks)."""
    try:
        return [f"stats:character:{game.check_user_id(payload.user_id)}"]
    except HandlerError:
        return []  # refused by its handler


def oura_day_ref(user_id: str, day: dt.date) -> str:
    return f"oura:{user_id}:{day.isoformat()}"


def oura_identity(ev: OuraSynced) -> str:
    """A day's first version keeps the identity it always had; a revision adds its number."""
    base = oura_day_ref(ev.user_id, ev.date)
    return base if ev.revision == 0 else f"{base}:rev{ev.revision}"


class StatsHandlers:
    """Every XP-granting route is batch-native: a group commit's activities cost one statement
    per table (earlier activities, characters, stats, achievements, levelups, activities)."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        # Derived activity ids use this installation's key (set at start), so nobody can
        # compute one in advance and pre-claim it.
        self.key: bytes | None = None
        self.users = UserRegistry()

    async def log_activities(self, jobs: list[Job]) -> None:
        """stats/activities/log, open to several accounts: `source: lifeops` (LifeOps speaks
        on its own topic) is refused and a `streak` is not honoured."""
        ok = []
        for job in jobs:
            if job.payload.source == "lifeops":
                job.refuse(
                    HandlerError(
                        "invalid_source",
                        "source 'lifeops' is reserved for LifeOps' own lifeops/activity/completed",
                    )
                )
            else:
                ok.append(Job(job.ctx, msgspec.structs.replace(job.payload, streak=None)))
        await self._log(ok)
        for job, done in zip([j for j in jobs if j.error is None], ok, strict=True):
            job.reply, job.error = done.reply, done.error

    async def activities_completed(self, jobs: list[Job]) -> None:
        """lifeops/activity/completed: only LifeOps may publish there (the ACL), so its streak
        counts."""
        await self._log(jobs)

    async def _log(self, jobs: list[Job]) -> None:
        """The inbox already answered repeated dedup keys (activity_id, else source and
        source_ref). What it cannot see: the same (source, source_ref) under another
        activity_id, or after its inbox key was pruned: answered with the original result."""
        asked = _asked(jobs)
        if not asked:
            return
        reqs: list[ActivityLogRequest] = [jobs[a.index].payload for a in asked]
        refs: list[tuple[str, str]] = [(r.source, r.source_ref) for r in reqs if r.source_ref]

        def screen(earlier: batch.Earlier) -> batch.Screened:
            return batch.screen_activities(asked, earlier, self.rules, self.key)

        await self._grant(jobs, screen, refs=refs, days=[])

    async def oura_days(self, jobs: list[Job]) -> None:
        """lifeops/oura/synced: a day's scores. Each version (revision) of a user's day counts
        once; per stat it grants what the rules give beyond the XP the day already got from
        its other versions, so a day's XP is, per stat, the rules' XP of its best version.
        Read under the user's lock (Route.locks): another agent's version is either committed
        and read here, or waits for this commit and reads it."""
        asked = _asked(jobs)
        if not asked:
            return

        def screen(earlier: batch.Earlier) -> batch.Screened:
            return batch.screen_oura(asked, earlier, self.rules, self.key, oura_identity)

        await self._grant(
            jobs, screen, refs=[], days=[(a.user_id, jobs[a.index].payload.date) for a in asked]
        )

    async def _grant(
        self,
        jobs: list[Job],
        screen: Callable[[batch.Earlier], batch.Screened],
        *,
        refs: list[tuple[str, str]],
        days: list[tuple[str, dt.date]],
    ) -> None:
        """A batch of XP grants as load -> compute -> write: one repository call reads what
        Stats has of the messages, admits their users and reads the characters; the batch is
        decided in memory (stats_agent.batch, ledger: in order, each character replayed from
        where it was); one call writes every table once; then the events and one retained
        sheet per user."""
        tx = jobs[0].ctx.tx
        state = await repository.load_batch(tx, refs, days, screen, self.users)
        answers = dict(state.screened.answers)
        for p, holder in state.refused:
            answers[p.index] = refusal(p.grant.user_id, holder)
        d = batch.decide(state.fresh, state.taken_ids, state.before, self.rules)
        answers.update(d.answers)
        at = d.todo[0].now.isoformat() if d.todo else ""
        awarded, finals = await repository.write_batch(tx, d, at)
        answers.update({p.index: reply for p, (reply, _) in zip(d.todo, finals, strict=True)})
        answers.update(batch.settle(d.later, answers))
        for index, answer in answers.items():
            if isinstance(answer, HandlerError):
                jobs[index].refuse(answer)
            else:
                jobs[index].reply = answer
        await self._publish(jobs, d, state.before, awarded, [won for _, won in finals], at)

    async def _publish(
        self,
        jobs: list[Job],
        d: batch.Decision,
        before: dict[str, ledger.Character],
        awarded: set[tuple[str, str]],
        won: list[list[str]],
        at: str,
    ) -> None:
        """Each activity's level-up and achievement events, then one retained sheet per
        user (the last of the user's activities in the batch publishes it)."""
        titles = {r.code: r.title for r in self.rules.achievements}
        for p, a, codes in zip(d.todo, d.applied, won, strict=True):
            ctx, g = jobs[p.index].ctx, p.grant
            for event in a.levelups:
                await ctx.emit("levelup", event)
            for code in codes:
                await ctx.emit(
                    "achievement",
                    AchievementUnlocked(
                        event_id=f"ach:{g.user_id}:{code}",
                        user_id=g.user_id,
                        achievement_code=code,
                        title=titles[code],
                        activity_id=g.activity_id,
                        awarded_at=ctx.now,
                    ),
                )
        last = {p.grant.user_id: jobs[p.index].ctx for p in d.todo}
        for user, ctx in last.items():
            c, had = d.characters[user], before.get(user, ledger.Character()).achievements
            codes = [x for x in c.achievements if x in had or (user, x) in awarded]
            sheet = repository.build_sheet(
                user, self.rules.game.stats, c.total_xp, c.activities, at,
                dict(sorted(c.stat_xp.items())), codes,
            )  # fmt: skip
            await ctx.emit("character_state", sheet, user_id=user)

    async def character_get(self, ctx: Context, req: CharacterGetRequest) -> CharacterReply:
        user_id = game.check_user_id(req.user_id)
        sheet = await repository.character_sheet(ctx.tx, user_id, self.rules.game.stats)
        if sheet is None:
            raise NotFound(f"no character for user {user_id!r}")
        return CharacterReply(character=sheet, total_xp=sheet.total_xp, level=sheet.level)

    async def events_recent(self, ctx: Context, req: EventsRecentRequest) -> EventsRecentReply:
        user_id = game.check_user_id(req.user_id)
        levelups, achievements = await repository.events_since(
            ctx.tx, user_id, req.since, req.limit
        )
        return EventsRecentReply(levelups=levelups, achievements=achievements)


def _asked(jobs: list[Job]) -> list[batch.Asked]:
    """Each job with its checked user id; a bad one is that job's refusal."""
    asked: list[batch.Asked] = []
    for index, job in enumerate(jobs):
        try:
            user_id = game.check_user_id(job.payload.user_id)
        except HandlerError as exc:
            job.refuse(exc)
            continue
        asked.append(batch.Asked(index, job.ctx.now, user_id, job.payload))
    return asked
