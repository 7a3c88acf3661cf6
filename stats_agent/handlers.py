"""Message handlers of the Stats agent; each runs inside the group commit's transaction."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityCompleted,
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    CharacterSheet,
    EventsRecentReply,
    EventsRecentRequest,
    LevelUp,
    OuraSynced,
)
from mesh import Context, HandlerError, NotFound, codec, keyed_uuid
from stats_agent import game, repository
from stats_agent.rules import Rules


def activity_identity(req: ActivityLogRequest) -> str | None:
    """The dedup key: activity_id when given, else (source, source_ref); None when neither."""
    if req.activity_id:
        return f"activity:{req.activity_id}"
    if req.source_ref:
        return f"activity:{req.source}:{req.source_ref}"
    return None


def oura_identity(ev: OuraSynced) -> str:
    return f"oura:{ev.user_id}:{ev.date.isoformat()}"


class StatsHandlers:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        # Derived activity ids use this installation's key (set at start), so nobody can
        # compute one in advance and pre-claim it.
        self.key: bytes | None = None

    async def log_activity(self, ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        """stats/activities/log, open to several accounts: `source: lifeops` (LifeOps speaks
        on its own topic) is refused and a `streak` is not honoured."""
        if req.source == "lifeops":
            raise HandlerError(
                "invalid_source",
                "source 'lifeops' is reserved for LifeOps' own lifeops/activity/completed",
            )
        return await self._log(ctx, msgspec.structs.replace(req, streak=None))

    async def activity_completed(self, ctx: Context, ev: ActivityCompleted) -> ActivityLogReply:
        """lifeops/activity/completed: only LifeOps may publish there (the ACL), so its streak
        counts."""
        return await self._log(ctx, ev)

    def _derived_id(self, text: str) -> str:
        if self.key is None:
            raise RuntimeError("the Stats agent has not started (no installation key)")
        return keyed_uuid(self.key, text)

    async def _log(self, ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        user_id = game.check_user_id(req.user_id)
        # The inbox already refused a repeated dedup key (activity_id, else source+source_ref).
        # What it cannot see: the same (source, source_ref) under another activity_id, or
        # after its inbox key was pruned. Answer that with the original result, grant nothing.
        if req.source_ref:
            prior = await repository.activity_by_source(ctx.tx, req.source, req.source_ref)
            if prior is not None:
                original: ActivityLogReply = codec.decode(prior.encode(), ActivityLogReply)
                return msgspec.structs.replace(original, duplicate=True)
        grants = game.grants_for(self.rules, req.activity_type, req.custom_xp)
        activity_id = req.activity_id or (
            self._derived_id(f"{req.source}:{req.source_ref}")
            if req.source_ref
            else str(uuid.uuid4())
        )
        known = await repository.activity_by_id(ctx.tx, activity_id)
        if known is not None:  # a repeat whose inbox key was pruned, or someone else's id
            if known[0] != user_id:
                raise HandlerError(
                    "activity_id_taken",
                    f"activity_id {activity_id[:80]!r} belongs to another activity",
                )
            earlier: ActivityLogReply = codec.decode(known[1].encode(), ActivityLogReply)
            return msgspec.structs.replace(earlier, duplicate=True)
        reply = await self._grant(ctx, user_id, activity_id, grants, streak=req.streak or 0)
        await repository.insert_activity(
            ctx.tx,
            activity_id=activity_id,
            user_id=user_id,
            activity_type=req.activity_type,
            source=req.source,
            source_ref=req.source_ref,
            activity_time=req.activity_time,
            xp=codec.encode(grants).decode(),
            reply=codec.encode(reply).decode(),
            now=ctx.now,
        )
        return reply

    async def oura_synced(self, ctx: Context, ev: OuraSynced) -> ActivityLogReply:
        user_id = game.check_user_id(ev.user_id)
        scores = {
            "sleep": ev.scores.sleep,
            "readiness": ev.scores.readiness,
            "activity": ev.scores.activity,
        }
        prior = await repository.activity_by_source(ctx.tx, "lifeops", oura_identity(ev))
        if prior is not None:  # its inbox key was pruned; the activity is still there
            original: ActivityLogReply = codec.decode(prior.encode(), ActivityLogReply)
            return msgspec.structs.replace(original, duplicate=True)
        grants = game.oura_grants(self.rules, scores)
        if not grants:
            return ActivityLogReply(message="no XP for these scores")
        activity_id = self._derived_id(oura_identity(ev))
        reply = await self._grant(ctx, user_id, activity_id, grants, streak=0)
        await repository.insert_activity(
            ctx.tx,
            activity_id=activity_id,
            user_id=user_id,
            activity_type="oura_daily",
            source="lifeops",
            source_ref=oura_identity(ev),
            activity_time=dt.datetime.combine(ev.date, dt.time(), dt.UTC),
            xp=codec.encode(grants).decode(),
            reply=codec.encode(reply).decode(),
            now=ctx.now,
        )
        return reply

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

    async def _grant(
        self, ctx: Context, user_id: str, activity_id: str, grants: dict[str, int], streak: int
    ) -> ActivityLogReply:
        gained = sum(grants.values())
        total, activities = await repository.add_character_xp(ctx.tx, user_id, gained, ctx.now)
        before, after = game.level_for(total - gained), game.level_for(total)
        stat_level_ups: dict[str, int] = {}
        stat_xp = await repository.add_stats_xp(ctx.tx, user_id, grants)
        for stat, xp in grants.items():
            new_xp = stat_xp[stat]
            old_lvl, new_lvl = game.level_for(new_xp - xp).level, game.level_for(new_xp).level
            if new_lvl > old_lvl:
                stat_level_ups[stat] = new_lvl
                await _level_up(ctx, user_id, activity_id, stat, old_lvl, new_lvl, new_xp)
        if after.level > before.level:
            await _level_up(ctx, user_id, activity_id, None, before.level, after.level, total)
        # Achievements: the whole stat picture, not only the stats this activity touched.
        sheet = await repository.character_sheet(
            ctx.tx, user_id, self.rules.game.stats, known=(total, activities, ctx.now.isoformat())
        )
        assert sheet is not None
        progress = game.Progress(
            activities=activities,
            level=after.level,
            stat_xp={s: st.xp for s, st in sheet.stats.items()},
            streak=streak,
        )
        new_achievements = await self._award(ctx, user_id, activity_id, sheet, progress)
        if new_achievements:
            sheet = msgspec.structs.replace(
                sheet,
                achievements=[*sheet.achievements, *new_achievements],
                latest_achievement=new_achievements[-1],
            )
        await ctx.emit("character_state", sheet, user_id=user_id)
        return ActivityLogReply(
            activity_id=activity_id,
            xp_granted=grants,
            stat_level_ups=stat_level_ups,
            character_level_up=after.level > before.level,
            new_level=after.level,
            total_xp=total,
            achievements=new_achievements,
            message=game.gained_message(grants),
        )

    async def _award(
        self,
        ctx: Context,
        user_id: str,
        activity_id: str,
        sheet: CharacterSheet,
        progress: game.Progress,
    ) -> list[str]:
        """Award every achievement the character has now earned and did not have; returns
        their codes in rule order, each staged as a stats/achievement event."""
        new: list[str] = []
        for rule in self.rules.achievements:
            if rule.code in sheet.achievements or not game.earned(rule, progress):
                continue
            if await repository.award(ctx.tx, user_id, rule.code, rule.title, activity_id, ctx.now):
                new.append(rule.code)
                await ctx.emit(
                    "achievement",
                    AchievementUnlocked(
                        event_id=f"ach:{user_id}:{rule.code}",
                        user_id=user_id,
                        achievement_code=rule.code,
                        title=rule.title,
                        activity_id=activity_id,
                        awarded_at=ctx.now,
                    ),
                )
        return new


async def _level_up(
    ctx: Context,
    user_id: str,
    activity_id: str,
    stat: str | None,
    previous: int,
    new: int,
    total_xp: int,
) -> None:
    """Stage one level-up event; its id is deterministic, so a republish is recognisable."""
    event = LevelUp(
        event_id=f"lvl:{user_id}:{stat or 'character'}:{new}",
        user_id=user_id,
        new_level=new,
        previous_level=previous,
        total_xp=total_xp,
        activity_id=activity_id,
        stat=stat,
        occurred_at=ctx.now,
    )
    await repository.keep_levelup(ctx.tx, event)
    await ctx.emit("levelup", event)
