"""Pure game rules, with hypothesis properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import ConfigError, HandlerError
from stats_agent import game
from stats_agent.rules import DEFAULT_RULES, load_rules

RULES = load_rules()


def test_habitica_curve() -> None:
    """25*lvl below 5, 150 at 5, then Habitica's rounded quadratic."""
    assert [game.xp_to_next_level(n) for n in range(1, 8)] == [25, 50, 75, 100, 150, 210, 220]
    assert game.xp_to_next_level(10) == 260  # round((25 + 100 + 139.75) / 10) * 10
    assert game.level_for(0).level == 1
    assert game.level_for(24).level == 1 and game.level_for(25).level == 2
    assert game.level_for(400) == game.LevelInfo(6, 0, 210)


@given(st.integers(min_value=0, max_value=2_000_000), st.integers(min_value=0, max_value=50_000))
def test_levels_never_decrease_and_report_exactly_when_they_change(xp: int, grant: int) -> None:
    """More XP never lowers the level; XP into the level stays below the level's need."""
    before, after = game.level_for(xp), game.level_for(xp + grant)
    assert after.level >= before.level
    assert 0 <= after.xp_into_level < after.xp_to_next_level
    # consistency: the level's cumulative floor plus XP into it is the total
    floor = sum(game.xp_to_next_level(n) for n in range(1, after.level))
    assert floor + after.xp_into_level == xp + grant


@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=40))
def test_total_xp_is_the_sum_of_grants_whatever_the_split(grants: list[int]) -> None:
    """Granting in many small steps reaches the same level as one big grant."""
    total = 0
    levels = []
    for g in grants:
        total += g
        levels.append(game.level_for(total).level)
    assert levels == sorted(levels)
    assert game.level_for(sum(grants)).level == (levels[-1] if levels else 1)


def test_grants_and_messages() -> None:
    """The seed's example and message form; custom_xp overrides; bad custom_xp is refused."""
    assert game.grants_for(RULES, "gym_session", None) == {"STR": 50, "STA": 20}
    assert game.gained_message({"STR": 50, "STA": 20}) == "Gained XP: STR+50, STA+20"
    assert game.grants_for(RULES, "gym_session", {"CHA": 5}) == {"CHA": 5}
    for bad in ({}, {"LUCK": 1}, {"STR": -1}, {"STR": 10**6}):
        with pytest.raises(HandlerError):
            game.grants_for(RULES, "x", bad)
    with pytest.raises(HandlerError, match="unknown activity_type"):
        game.grants_for(RULES, "juggling", None)


@pytest.mark.parametrize(
    "uid", ["alice", "A_b-9", "x" * 64, "6f1d3c2e-8a4b-4f6e-9c1d-2b3a4c5d6e7f"]
)
def test_valid_user_ids(uid: str) -> None:
    """Slugs of 1-64 [A-Za-z0-9_-] and UUIDs are accepted."""
    assert game.check_user_id(uid)


@pytest.mark.parametrize("uid", ["", "a b", "a/b", "+", "#", "$SYS", "a\x00", "x" * 65, "get"])
def test_invalid_user_ids(uid: str) -> None:
    """Anything that cannot be one safe topic level is refused."""
    with pytest.raises(HandlerError):
        game.check_user_id(uid)


def test_bad_rules_files_name_the_line(tmp_path: Path) -> None:
    """A wrong type, an unknown stat or broken TOML fails at startup with the file and line."""
    text = DEFAULT_RULES.read_text()
    lines = text.splitlines()
    bad_stat = text.replace("xp = { WIS = 20 }", "xp = { WISDOM = 20 }")
    p = tmp_path / "rules.toml"
    p.write_text(bad_stat)
    line = next(i for i, ln in enumerate(bad_stat.splitlines(), 1) if "WISDOM" in ln)
    with pytest.raises(ConfigError, match=rf"rules.toml:{line}: .*unknown stat 'WISDOM'"):
        load_rules(p)
    wrong_type = text.replace("max_custom_xp = 10000", 'max_custom_xp = "lots"')
    p.write_text(wrong_type)
    line = next(i for i, ln in enumerate(lines, 1) if ln.startswith("max_custom_xp"))
    with pytest.raises(ConfigError, match=rf"rules.toml:{line}: Expected `int`"):
        load_rules(p)
    p.write_text(text + "\n[broken\n")
    with pytest.raises(ConfigError, match="line"):
        load_rules(p)
    p.write_text(text.replace("[game]", "[game]\nsurprise = 1"))
    with pytest.raises(ConfigError, match="surprise"):
        load_rules(p)
