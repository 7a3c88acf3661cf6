"""Message handlers of the Stats agent; each runs inside the group commit's transaction."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from lifeops_contract import contract
from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityCompleted,
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    EventsRecentReply,
    EventsRecentRequest,
    OuraSynced,
)
from lifeops_contract.user_registry import UserRegistry, refusal
from mesh import Context, ContractError, HandlerError, Job, NotFound, codec, keyed_uuid
from stats_agent import game, ledger, repository
from stats_agent.rules import Rules


def character_lock(payload: ActivityLogRequest | ActivityCompleted | OuraSynced) -> list[str]:
    """The lock key of a message that grants XP: its user's character. Every read-then-write
    of a grant ends there (an Oura day's earlier versions, the totals before an award or a
    level-up, the achievements a user has, the retained sheet), so the user is the key:
    agents sharing the database take turns per user (mesh Route.locks)."""
    try:
        return [f"stats:character:{game.check_user_id(payload.user_id)}"]
    except HandlerError:
        return []  # refused by its handler


def oura_identity(ev: OuraSynced) -> str:
    """An Oura day version's identity: its inbox key as topics.toml's `oura_synced` dedup
    builds it (`oura:<user>:<date>`, `:rev<n>` from the first revision on), also the
    `source_ref` its activity is stored under and the seed of its activity id."""
    key = contract().entry("oura_synced").dedup_rule.key(ev)
    if not isinstance(key, str):  # user_id and date are required: a checked user has both
        raise ContractError(f"oura_synced's dedup gives no key for {ev.user_id!r} {ev.date}")
    return key


def oura_increment(full: dict[str, int], so_far: dict[str, int]) -> dict[str, int]:
    """Per stat, what the rules give a day's version beyond what the day already got (never
    negative: a revised-down score takes nothing back)."""
    return {stat: xp - so_far.get(stat, 0) for stat, xp in full.items() if xp > so_far.get(stat, 0)}


class Pending(msgspec.Struct, kw_only=True):
    """An activity of the batch that grants XP, with the row it becomes."""

    job: Job
    grant: ledger.Grant
    activity_type: str
    source: str
    source_ref: str | None
    activity_time: dt.datetime | None
    day: dt.date | None = None  # a version of an Oura day: its day and revision
    revision: int | None = None


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

    def _derived_id(self, text: str) -> str:
        if self.key is None:
            raise RuntimeError("the Stats agent has not started (no installation key)")
        return keyed_uuid(self.key, text)

    async def _log(self, jobs: list[Job]) -> None:
        """The inbox already answered repeated dedup keys (activity_id, else source and
        source_ref). What it cannot see: the same (source, source_ref) under another
        activity_id, or after its inbox key was pruned: answered with the original result."""
        valid = _with_user_ids(jobs)
        if not valid:
            return
        tx = valid[0][0].ctx.tx
        refs = [(j.payload.source, j.payload.source_ref) for j, _ in valid if j.payload.source_ref]
        prior = await repository.replies_by_source(tx, refs) if refs else {}
        fresh: list[Pending] = []
        for job, user_id in valid:
            req: ActivityLogRequest = job.payload
            if req.source_ref and (req.source, req.source_ref) in prior:
                job.reply = _again(prior[(req.source, req.source_ref)])
                continue
            try:
                grants = game.grants_for(self.rules, req.activity_type, req.custom_xp)
            except HandlerError as exc:
                job.refuse(exc)
                continue
            activity_id = req.activity_id or (
                self._derived_id(f"{req.source}:{req.source_ref}")
                if req.source_ref
                else str(uuid.uuid4())
            )
            grant = ledger.Grant(
                user_id=user_id, activity_id=activity_id, grants=grants, streak=req.streak or 0
            )
            fresh.append(
                Pending(
                    job=job,
                    grant=grant,
                    activity_type=req.activity_type,
                    source=req.source,
                    source_ref=req.source_ref,
                    activity_time=req.activity_time,
                )
            )
        await self._grant_new(fresh)

    async def oura_days(self, jobs: list[Job]) -> None:
        """lifeops/oura/synced: a day's scores. Each version (revision) of a user's day counts
        once; per stat it grants what the rules give beyond the XP the day already got from
        its other versions, so a day's XP is, per stat, the rules' XP of its best version.
        Read under the user's lock (Route.locks): another agent's version is either committed
        and read here, or waits for this commit and reads it."""
        valid = _with_user_ids(jobs)
        if not valid:
            return
        tx = valid[0][0].ctx.tx
        granted: dict[tuple[str, dt.date], dict[str, int]] = {}
        prior: dict[tuple[str, dt.date, int], str] = {}
        for v in await repository.oura_versions(tx, [(u, j.payload.date) for j, u in valid]):
            total = granted.setdefault((v.user_id, v.day), {})
            for stat, xp in v.xp.items():
                total[stat] = total.get(stat, 0) + xp
            prior[(v.user_id, v.day, v.revision)] = v.reply
        fresh: list[Pending] = []
        for job, user_id in valid:
            ev: OuraSynced = job.payload
            if (user_id, ev.date, ev.revision) in prior:  # its inbox key was pruned
                job.reply = _again(prior[(user_id, ev.date, ev.revision)])
                continue
            scores = {
                "sleep": ev.scores.sleep,
                "readiness": ev.scores.readiness,
                "activity": ev.scores.activity,
            }
            full = game.oura_grants(self.rules, scores)
            known = (user_id, ev.date) in granted
            so_far = granted.setdefault((user_id, ev.date), {})  # the batch's versions count
            grants = oura_increment(full, so_far)
            if not grants:
                job.reply = ActivityLogReply(
                    message="no new XP for this day" if known else "no XP for these scores"
                )
                continue
            so_far.update({stat: full[stat] for stat in grants})
            ref = oura_identity(ev)
            grant = ledger.Grant(
                user_id=user_id,
                activity_id=self._derived_id(ref),
                grants=grants,
                new_activity=not known,
            )
            fresh.append(
                Pending(
                    job=job,
                    grant=grant,
                    activity_type="oura_daily",
                    source="lifeops",
                    source_ref=ref,
                    activity_time=dt.datetime.combine(ev.date, dt.time(), dt.UTC),
                    day=ev.date,
                    revision=ev.revision,
                )
            )
        await self._grant_new(fresh)

    async def _grant_new(self, fresh: list[Pending]) -> None:
        """Activities not seen before, in order: a taken activity_id is refused (or, the same
        user's, answered as the repeat it is); one activity twice in the batch counts once."""
        if not fresh:
            return
        tx = fresh[0].job.ctx.tx
        fresh = await self._admitted(fresh)
        known = await repository.activities_by_id(tx, [p.grant.activity_id for p in fresh])
        todo: list[Pending] = []
        first: dict[str, Pending] = {}
        first_ref: dict[tuple[str, str], Pending] = {}
        later: list[tuple[Pending, Pending]] = []
        for p in fresh:
            aid, ref = p.grant.activity_id, (p.source, p.source_ref or "")
            earlier = known.get(aid)
            if earlier is not None and earlier[0] != p.grant.user_id:
                p.job.refuse(
                    HandlerError(
                        "activity_id_taken", f"activity_id {aid[:80]!r} belongs to another activity"
                    )
                )
            elif earlier is not None:
                p.job.reply = _again(earlier[1])
            elif aid in first or (p.source_ref and ref in first_ref):
                later.append((p, first.get(aid) or first_ref[ref]))
            else:
                first[aid] = p
                if p.source_ref:
                    first_ref[ref] = p
                todo.append(p)
        await self._apply(todo)
        for p, original in later:
            if original.job.reply is not None and original.grant.user_id == p.grant.user_id:
                p.job.reply = msgspec.structs.replace(original.job.reply, duplicate=True)
            else:
                aid = p.grant.activity_id
                p.job.refuse(
                    HandlerError(
                        "activity_id_taken", f"activity_id {aid[:80]!r} belongs to another activity"
                    )
                )

    async def _admitted(self, fresh: list[Pending]) -> list[Pending]:
        """A new activity's user is recorded with its first write; a user id that is another
        stored user's spelled differently (Alice for alice, run_club for run-club) is refused."""
        ctx = fresh[0].job.ctx
        refused = await self.users.admit(ctx.tx, [p.grant.user_id for p in fresh], ctx.now)
        for p in fresh:
            if p.grant.user_id in refused:
                p.job.refuse(refusal(p.grant.user_id, refused[p.grant.user_id]))
        return [p for p in fresh if p.job.error is None]

    async def _apply(self, todo: list[Pending]) -> None:
        """Grant XP: characters and stats incremented in one statement each (concurrent agents
        add, never overwrite), the batch replayed from each character's start (ledger), then
        achievements, level-ups, events, activities and one retained sheet per user."""
        if not todo:
            return
        tx, now = todo[0].job.ctx.tx, todo[0].job.ctx.now
        at = now.isoformat()
        gains: dict[str, tuple[int, int]] = {}
        stat_gains: dict[tuple[str, str], int] = {}
        for p in todo:
            xp, n = gains.get(p.grant.user_id, (0, 0))
            gains[p.grant.user_id] = (xp + sum(p.grant.grants.values()), n + p.grant.counted)
            for stat, value in p.grant.grants.items():
                key = (p.grant.user_id, stat)
                stat_gains[key] = stat_gains.get(key, 0) + value
        after = await repository.add_xp(tx, gains, stat_gains, at)
        users = sorted(gains)
        extra = await repository.stats_and_achievements(tx, users)
        chars = ledger.starts(
            {
                u: ledger.Character(
                    total_xp=after[u][0],
                    activities=after[u][1],
                    stat_xp=extra[u][0],
                    achievements=extra[u][1],
                )
                for u in users
            },
            [p.grant for p in todo],
        )
        applied = [ledger.apply(self.rules, chars[p.grant.user_id], p.grant, now) for p in todo]
        titles = {r.code: r.title for r in self.rules.achievements}
        wanted = [
            (a.grant.user_id, code, titles[code], a.grant.activity_id)
            for a in applied
            for code in a.awards
        ]
        awarded = await repository.award_many(tx, wanted, at)
        last: dict[str, Context] = {}
        won = [self._won(p, a, awarded) for p, a in zip(todo, applied, strict=True)]
        # Each kind of write for the whole batch in turn, so each is one statement.
        for a in applied:
            for event in a.levelups:
                repository.keep_levelup(todo[0].job.ctx.tx, event)
        for p, a, codes in zip(todo, applied, won, strict=True):
            await self._events(p, a, codes, titles)
        for p, a, codes in zip(todo, applied, won, strict=True):
            self._record(p, a, codes)
            last[p.grant.user_id] = p.job.ctx
        for user, ctx in last.items():
            c = chars[user]
            codes = [x for x in c.achievements if x in extra[user][1] or (user, x) in awarded]
            sheet = repository.build_sheet(
                user, self.rules.game.stats, c.total_xp, c.activities, after[user][2],
                c.stat_xp, codes,
            )  # fmt: skip
            await ctx.emit("character_state", sheet, user_id=user)

    @staticmethod
    def _won(p: Pending, a: ledger.Applied, awarded: set[tuple[str, str]]) -> list[str]:
        """The achievements this activity really awarded (another agent may have been first)."""
        return [code for code in a.awards if (p.grant.user_id, code) in awarded]

    async def _events(
        self, p: Pending, a: ledger.Applied, won: list[str], titles: dict[str, str]
    ) -> None:
        """One activity's level-up and achievement events."""
        ctx, g = p.job.ctx, p.grant
        for event in a.levelups:
            await ctx.emit("levelup", event)
        for code in won:
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

    @staticmethod
    def _record(p: Pending, a: ledger.Applied, won: list[str]) -> None:
        """One activity's row and its reply."""
        ctx, g = p.job.ctx, p.grant
        reply = a.reply
        if won != a.awards:  # another agent awarded one a moment ago
            reply = msgspec.structs.replace(reply, achievements=won)
        repository.insert_activity(
            ctx.tx,
            activity_id=g.activity_id,
            user_id=g.user_id,
            activity_type=p.activity_type,
            source=p.source,
            source_ref=p.source_ref,
            activity_time=p.activity_time,
            xp=codec.encode(g.grants).decode(),
            reply=codec.encode(reply).decode(),
            now=ctx.now,
            day=p.day,
            revision=p.revision,
        )
        p.job.reply = reply

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


def _again(stored: str) -> ActivityLogReply:
    """An activity known before: its original result, marked as a repeat."""
    original: ActivityLogReply = codec.decode(stored.encode(), ActivityLogReply)
    return msgspec.structs.replace(original, duplicate=True)


def _with_user_ids(jobs: list[Job]) -> list[tuple[Job, str]]:
    """Each job with its checked user id; a bad one is that job's refusal."""
    valid: list[tuple[Job, str]] = []
    for job in jobs:
        try:
            valid.append((job, game.check_user_id(job.payload.user_id)))
        except HandlerError as exc:
            job.refuse(exc)
    return valid
