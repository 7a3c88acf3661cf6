"""Pure game rules: level curve, grants, level-ups and achievements. No I/O."""

from __future__ import annotations

import math

import msgspec

from lifeops_contract.ids import check_user_id
from mesh import HandlerError
from stats_agent.rules import AchievementRule, Rules


def xp_to_next_level(level: int) -> int:
    """Habitica's curve (JavaScript rounding)."""
    if level < 5:
        return 25 * level
    if level == 5:
        return 150
    return math.floor((0.25 * level**2 + 10 * level + 139.75) / 10 + 0.5) * 10


class LevelInfo(msgspec.Struct, frozen=True):
    level: int
    xp_into_level: int
    xp_to_next_level: int


def level_for(xp: int) -> LevelInfo:
    """The level reached with `xp` in total; level-ups loop, so one grant can raise several."""
    if xp < 0:
        raise ValueError("xp cannot be negative")
    level, rest = 1, xp
    while rest >= (need := xp_to_next_level(level)):
        rest -= need
        level += 1
    return LevelInfo(level, rest, need)


def grants_for(
    rules: Rules, activity_type: str, custom_xp: dict[str, int] | None
) -> dict[str, int]:
    """XP per stat for one activity: custom_xp overrides the activity's rule."""
    known = rules.game.stats
    if custom_xp is not None:
        if not custom_xp:
            raise HandlerError("invalid_custom_xp", "custom_xp must name at least one stat")
        for stat, xp in custom_xp.items():
            if stat not in known:
                raise HandlerError(
                    "invalid_custom_xp",
                    f"custom_xp: unknown stat {stat!r} (known: {', '.join(known)})",
                )
            if not 0 < xp <= rules.game.max_custom_xp:
                raise HandlerError(
                    "invalid_custom_xp",
                    f"custom_xp[{stat}] = {xp}: must be 1..{rules.game.max_custom_xp}",
                )
        return {s: custom_xp[s] for s in known if s in custom_xp}
    rule = rules.activities.get(activity_type)
    if rule is None:
        raise HandlerError(
            "unknown_activity_type",
            f"unknown activity_type {activity_type[:80]!r} and no custom_xp given",
        )
    return dict(rule.xp)


def oura_grants(rules: Rules, scores: dict[str, int | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rules.oura:
        score = scores.get(r.score)
        if score is None:
            continue
        if not 0 <= score <= 100:
            raise HandlerError("invalid_score", f"Oura {r.score} score {score} is not in 0..100")
        xp = math.floor(score * r.factor)
        if xp > 0:
            out[r.stat] = out.get(r.stat, 0) + xp
    return out


def gained_message(grants: dict[str, int]) -> str:
    """The seed's message form: "Gained XP: STR+50, STA+20"."""
    return "Gained XP: " + ", ".join(f"{s}+{xp}" for s, xp in grants.items())


class Progress(msgspec.Struct, frozen=True):
    """What a character has, for achievement checks."""

    activities: int
    level: int
    stat_xp: dict[str, int]
    streak: int


def earned(rule: AchievementRule, p: Progress) -> bool:
    match rule.kind:
        case "activities":
            return p.activities >= rule.threshold
        case "character_level":
            return p.level >= rule.threshold
        case "stat_xp":
            return any(xp >= rule.threshold for xp in p.stat_xp.values())
        case "streak":
            return p.streak >= rule.threshold


__all__ = ["check_user_id"]
