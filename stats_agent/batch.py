"""A batch of XP-granting messages, decided: pure (no I/O), over what `repository.load_batch`
read; `repository.write_batch` writes the decision.

The three steps of every XP-granting route (stats/activities/log, lifeops/activity/completed,
lifeops/oura/synced): a screen of the messages against what Stats already has (an activity
known by its source and source_ref, the versions of an Oura day) leaves the fresh ones;
`decide` answers those whose activity_id is taken and replays the rest in order on each
character (`ledger`); `final` is an activity's reply once its achievements are stored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import msgspec

from lifeops_contract.schemas import (
    ActivityCompleted,
    ActivityLogReply,
    ActivityLogRequest,
    OuraSynced,
)
from mesh import HandlerError, codec, keyed_uuid
from stats_agent import game, ledger
from stats_agent.rules import Rules

Answers = dict[int, ActivityLogReply | HandlerError]
"""{index of a message in the batch: its reply, or its refusal}"""

OuraIdentity = Callable[[OuraSynced], str]
"""The source_ref of an Oura day's version (stats_agent.handlers.oura_identity)."""


class OuraVersion(msgspec.Struct, frozen=True):
    """A version of a user's Oura day that Stats has: what it granted and its reply."""

    user_id: str
    day: dt.date
    revision: int
    xp: dict[str, int]
    reply: str


class Earlier(msgspec.Struct, frozen=True):
    """What Stats has of a batch's messages: stored replies by (source, source_ref), and the
    versions of the Oura days."""

    replies: dict[tuple[str, str], str]
    versions: list[OuraVersion]


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """The `index`-th message of the batch, an activity that grants XP, with its row."""

    index: int
    now: dt.datetime  # its context's clock
    grant: ledger.Grant
    activity_type: str
    source: str
    source_ref: str | None
    activity_time: dt.datetime | None
    day: dt.date | None = None  # a version of an Oura day: its day and revision
    revision: int | None = None


class Screened(msgspec.Struct):
    """The messages that may grant XP, and the answers of the others."""

    fresh: list[Pending]
    answers: Answers


class Asked(msgspec.Struct, frozen=True):
    """A message of the batch whose user id passed the check."""

    index: int
    now: dt.datetime
    user_id: str
    payload: ActivityLogRequest | ActivityCompleted | OuraSynced


def derived_id(key: bytes | None, text: str) -> str:
    """An activity id derived with the installation's key: nobody can compute one in advance
    and pre-claim it."""
    if key is None:
        raise RuntimeError("the Stats agent has not started (no installation key)")
    return keyed_uuid(key, text)


def again(stored: str) -> ActivityLogReply:
    """An activity known before: its original result, marked as a repeat."""
    original: ActivityLogReply = codec.decode(stored.encode(), ActivityLogReply)
    return msgspec.structs.replace(original, duplicate=True)


def taken(activity_id: str) -> HandlerError:
    return HandlerError(
        "activity_id_taken", f"activity_id {activity_id[:80]!r} belongs to another activity"
    )


def screen_activities(
    asked: list[Asked], earlier: Earlier, rules: Rules, key: bytes | None
) -> Screened:
    """Activities: one known by (source, source_ref) is answered with its original result
    (its inbox key may have been pruned, or it came under another activity_id); the rules
    refuse an unknown activity type."""
    fresh: list[Pending] = []
    answers: Answers = {}
    for a in asked:
        req = a.payload
        assert isinstance(req, ActivityLogRequest | ActivityCompleted)
        if req.source_ref and (req.source, req.source_ref) in earlier.replies:
            answers[a.index] = again(earlier.replies[(req.source, req.source_ref)])
            continue
        try:
            grants = game.grants_for(rules, req.activity_type, req.custom_xp)
        except HandlerError as exc:
            answers[a.index] = exc
            continue
        activity_id = req.activity_id or (
            derived_id(key, f"{req.source}:{req.source_ref}")
            if req.source_ref
            else str(uuid.uuid4())
        )
        grant = ledger.Grant(
            user_id=a.user_id, activity_id=activity_id, grants=grants, streak=req.streak or 0
        )
        fresh.append(
            Pending(
                index=a.index,
                now=a.now,
                grant=grant,
                activity_type=req.activity_type,
                source=req.source,
                source_ref=req.source_ref,
                activity_time=req.activity_time,
            )
        )
    return Screened(fresh, answers)


def oura_increment(full: dict[str, int], so_far: dict[str, int]) -> dict[str, int]:
    """Per stat, what the rules give a day's version beyond what the day already got (never
    negative: a revised-down score takes nothing back)."""
    return {stat: xp - so_far.get(stat, 0) for stat, xp in full.items() if xp > so_far.get(stat, 0)}


def screen_oura(
    asked: list[Asked], earlier: Earlier, rules: Rules, key: bytes | None, identity: OuraIdentity
) -> Screened:
    """Oura days: a version Stats has is answered with its reply; per stat a version grants
    what the rules give beyond what the day's other versions (the batch's too) got."""
    granted: dict[tuple[str, dt.date], dict[str, int]] = {}
    prior: dict[tuple[str, dt.date, int], str] = {}
    for v in earlier.versions:
        total = granted.setdefault((v.user_id, v.day), {})
        for stat, xp in v.xp.items():
            total[stat] = total.get(stat, 0) + xp
        prior[(v.user_id, v.day, v.revision)] = v.reply
    fresh: list[Pending] = []
    answers: Answers = {}
    for a in asked:
        ev = a.payload
        assert isinstance(ev, OuraSynced)
        if (a.user_id, ev.date, ev.revision) in prior:  # its inbox key was pruned
            answers[a.index] = again(prior[(a.user_id, ev.date, ev.revision)])
            continue
        scores = {
            "sleep": ev.scores.sleep,
            "readiness": ev.scores.readiness,
            "activity": ev.scores.activity,
        }
        full = game.oura_grants(rules, scores)
        known = (a.user_id, ev.date) in granted
        so_far = granted.setdefault((a.user_id, ev.date), {})  # the batch's versions count
        grants = oura_increment(full, so_far)
        if not grants:
            message = "no new XP for this day" if known else "no XP for these scores"
            answers[a.index] = ActivityLogReply(message=message)
            continue
        so_far.update({stat: full[stat] for stat in grants})
        ref = identity(ev)
        grant = ledger.Grant(
            user_id=a.user_id,
            activity_id=derived_id(key, ref),
            grants=grants,
            new_activity=not known,
        )
        fresh.append(
            Pending(
                index=a.index,
                now=a.now,
                grant=grant,
                activity_type="oura_daily",
                source="lifeops",
                source_ref=ref,
                activity_time=dt.datetime.combine(ev.date, dt.time(), dt.UTC),
                day=ev.date,
                revision=ev.revision,
            )
        )
    return Screened(fresh, answers)


class Decision(msgspec.Struct):
    """What a batch grants: `todo` replayed in order (`applied`, on `characters`, which end
    as the batch leaves them), the increments and achievements to write; `answers` of the
    activities already taken, and `later` (a repeat, the first of its kind in the batch)
    answered once the first is (`settle`)."""

    todo: list[Pending]
    applied: list[ledger.Applied]
    characters: dict[str, ledger.Character]
    gains: dict[str, tuple[int, int]]  # user -> (XP, activities) added
    stat_gains: dict[tuple[str, str], int]  # (user, stat) -> XP added
    awards: list[tuple[str, str, str, str]]  # (user, code, title, activity_id)
    answers: Answers
    later: list[tuple[Pending, Pending]]


def decide(
    fresh: list[Pending],
    taken_ids: dict[str, tuple[str, str]],
    before: dict[str, ledger.Character],
    rules: Rules,
) -> Decision:
    """Activities not seen before, in order: a taken activity_id is refused (or, the same
    user's, answered as the repeat it is); one activity twice in the batch counts once. The
    rest are applied to the characters as they were before the batch (`before`)."""
    todo: list[Pending] = []
    answers: Answers = {}
    first: dict[str, Pending] = {}
    first_ref: dict[tuple[str, str], Pending] = {}
    later: list[tuple[Pending, Pending]] = []
    for p in fresh:
        aid, ref = p.grant.activity_id, (p.source, p.source_ref or "")
        earlier = taken_ids.get(aid)
        if earlier is not None and earlier[0] != p.grant.user_id:
            answers[p.index] = taken(aid)
        elif earlier is not None:
            answers[p.index] = again(earlier[1])
        elif aid in first or (p.source_ref and ref in first_ref):
            later.append((p, first.get(aid) or first_ref[ref]))
        else:
            first[aid] = p
            if p.source_ref:
                first_ref[ref] = p
            todo.append(p)
    return _replayed(todo, before, rules, answers, later)


def _replayed(
    todo: list[Pending],
    before: dict[str, ledger.Character],
    rules: Rules,
    answers: Answers,
    later: list[tuple[Pending, Pending]],
) -> Decision:
    gains: dict[str, tuple[int, int]] = {}
    stat_gains: dict[tuple[str, str], int] = {}
    for p in todo:
        xp, n = gains.get(p.grant.user_id, (0, 0))
        gains[p.grant.user_id] = (xp + sum(p.grant.grants.values()), n + p.grant.counted)
        for stat, value in p.grant.grants.items():
            key = (p.grant.user_id, stat)
            stat_gains[key] = stat_gains.get(key, 0) + value
    chars = {u: _copy(before.get(u)) for u in sorted(gains)}
    now = todo[0].now if todo else dt.datetime.now(dt.UTC)
    applied = [ledger.apply(rules, chars[p.grant.user_id], p.grant, now) for p in todo]
    titles = {r.code: r.title for r in rules.achievements}
    awards = [
        (a.grant.user_id, code, titles[code], a.grant.activity_id)
        for a in applied
        for code in a.awards
    ]
    return Decision(todo, applied, chars, gains, stat_gains, awards, answers, later)


def _copy(c: ledger.Character | None) -> ledger.Character:
    if c is None:
        return ledger.Character()
    return msgspec.structs.replace(c, stat_xp=dict(c.stat_xp), achievements=list(c.achievements))


def final(a: ledger.Applied, awarded: set[tuple[str, str]]) -> tuple[ActivityLogReply, list[str]]:
    """An activity's reply and the achievements it really awarded (another agent may have
    been first to one)."""
    won = [code for code in a.awards if (a.grant.user_id, code) in awarded]
    if won != a.awards:
        return msgspec.structs.replace(a.reply, achievements=won), won
    return a.reply, won


def settle(later: list[tuple[Pending, Pending]], answers: Answers) -> Answers:
    """A repeat inside the batch: the first one's reply, marked as a repeat, when it is the
    same user's; else its activity_id is taken."""
    out: Answers = {}
    for p, original in later:
        reply = answers.get(original.index)
        if isinstance(reply, ActivityLogReply) and original.grant.user_id == p.grant.user_id:
            out[p.index] = msgspec.structs.replace(reply, duplicate=True)
        else:
            out[p.index] = taken(p.grant.activity_id)
    return out
