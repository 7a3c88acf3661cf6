"""Activities applied to characters, in order: pure, for a whole batch at once.

The batch reads each character once, as it is before the batch (under the user's lock:
repository.load_batch), then replays the activities in order here (stats_agent.batch): per
activity the level before and after, stat level-ups, the achievements it earns and the reply.
No I/O; the same code serves a batch of one.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from lifeops_contract.schemas import ActivityLogReply, LevelUp
from stats_agent import game
from stats_agent.rules import Rules


class Character(msgspec.Struct, kw_only=True):
    """What the game needs of a character; changed in place while activities are applied."""

    total_xp: int = 0
    activities: int = 0
    stat_xp: dict[str, int] = {}
    achievements: list[str] = []


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    activity_id: str
    grants: dict[str, int]
    streak: int = 0
    # False for what only adds to an activity already counted (a revised Oura day).
    new_activity: bool = True

    @property
    def counted(self) -> int:
        """What this grant adds to the character's activity count."""
        return 1 if self.new_activity else 0


class Applied(msgspec.Struct, kw_only=True):
    grant: Grant
    reply: ActivityLogReply
    levelups: list[LevelUp]
    awards: list[str]  # achievement codes this activity earned, in rule order


def apply(rules: Rules, who: Character, g: Grant, now: dt.datetime) -> Applied:
    """Apply one activity to `who` (changed in place)."""
    gained = sum(g.grants.values())
    before = game.level_for(who.total_xp)
    who.total_xp += gained
    who.activities += g.counted
    after = game.level_for(who.total_xp)
    levelups: list[LevelUp] = []
    stat_level_ups: dict[str, int] = {}
    for stat, xp in g.grants.items():
        old = who.stat_xp.get(stat, 0)
        who.stat_xp[stat] = old + xp
        old_lvl, new_lvl = game.level_for(old).level, game.level_for(old + xp).level
        if new_lvl > old_lvl:
            stat_level_ups[stat] = new_lvl
            levelups.append(_levelup(g, stat, old_lvl, new_lvl, old + xp, now))
    if after.level > before.level:
        levelups.append(_levelup(g, None, before.level, after.level, who.total_xp, now))
    progress = game.Progress(
        activities=who.activities,
        level=after.level,
        stat_xp=dict(who.stat_xp),
        streak=g.streak,
    )
    awards = [
        rule.code
        for rule in rules.achievements
        if rule.code not in who.achievements and game.earned(rule, progress)
    ]
    who.achievements.extend(awards)
    reply = ActivityLogReply(
        activity_id=g.activity_id,
        xp_granted=g.grants,
        stat_level_ups=stat_level_ups,
        character_level_up=after.level > before.level,
        new_level=after.level,
        total_xp=who.total_xp,
        achievements=awards,
        message=game.gained_message(g.grants),
    )
    return Applied(grant=g, reply=reply, levelups=levelups, awards=awards)


def _levelup(
    g: Grant, stat: str | None, previous: int, new: int, total_xp: int, now: dt.datetime
) -> LevelUp:
    """Its id is deterministic, so a republished event is recognisable."""
    return LevelUp(
        event_id=f"lvl:{g.user_id}:{stat or 'character'}:{new}",
        user_id=g.user_id,
        new_level=new,
        previous_level=previous,
        total_xp=total_xp,
        activity_id=g.activity_id,
        stat=stat,
        occurred_at=now,
    )
