"""Day-boundary and streak rules, with hypothesis properties (time zones, DST, order)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifeops_agent import days
from lifeops_agent.timeline import DEFAULT_TIMELINE, load_timeline
from mesh.errors import ConfigError, HandlerError

BERLIN = days.zone("Europe/Berlin")
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
    "America/St_Johns",
]


def test_local_day_across_dst() -> None:
    """Europe's 2026 DST switches: the local day of instants around them is right."""
    # 2026-03-29 01:30 UTC is 03:30 CEST (clocks jumped at 01:00 UTC)
    assert days.local_day(dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC), BERLIN) == dt.date(
        2026, 3, 29
    )
    # 2026-10-24 22:30 UTC is 00:30 CEST on the 25th; 2026-10-25 22:30 UTC is 23:30 CET
    assert days.local_day(dt.datetime(2026, 10, 24, 22, 30, tzinfo=dt.UTC), BERLIN) == dt.date(
        2026, 10, 25
    )
    assert days.local_day(dt.datetime(2026, 10, 25, 22, 30, tzinfo=dt.UTC), BERLIN) == dt.date(
        2026, 10, 25
    )
    assert days.local_day(dt.datetime(2026, 1, 1, 12), BERLIN) == dt.date(2026, 1, 1)  # naive=UTC
    with pytest.raises(HandlerError):
        days.zone("Not/AZone")


@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    st.sampled_from(ZONES),
)
def test_local_day_is_within_a_day_of_utc(moment: dt.datetime, zone: str) -> None:
    """Whatever the zone (offsets -12..+14 h), the local day is the UTC day or a neighbour."""
    d = days.local_day(moment, days.zone(zone))
    assert abs((d - moment.date()).days) <= 1


@given(
    st.sets(st.integers(min_value=0, max_value=60), max_size=40), st.permutations(list(range(10)))
)
def test_streaks_do_not_depend_on_order(offsets: set[int], _order: list[int]) -> None:
    """Streaks are a function of the set of days: completing out of order changes nothing."""
    base = dt.date(2026, 1, 1)
    done = {base + dt.timedelta(days=o) for o in offsets}
    shuffled: set[dt.date] = set()
    for d in sorted(done, key=lambda d: hash((d, tuple(_order)))):
        shuffled.add(d)
    assert days.longest_run(shuffled) == days.longest_run(done)
    for d in done:
        run = days.run_ending_at(done, d)
        assert 1 <= run <= days.longest_run(done)
        # the run is exactly the consecutive days before d
        assert all(d - dt.timedelta(days=k) in done for k in range(run))
        assert d - dt.timedelta(days=run) not in done


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=5))
def test_a_missed_day_resets_the_current_streak(length: int, gap: int) -> None:
    """Done for `length` days up to yesterday: alive today; after a missed day it is 0."""
    today = dt.date(2026, 6, 15)
    end = today - dt.timedelta(days=1 + gap)
    done = {end - dt.timedelta(days=k) for k in range(length)}
    expected = length if gap == 0 else 0
    assert days.current_streak(done, today) == expected
    assert days.current_streak(done | {today}, today) == (length + 1 if gap == 0 else 1)


def test_default_timeline_is_a_sensible_day() -> None:
    """The shipped timeline loads and holds the usual routine."""
    t = load_timeline()
    assert {"morning_stretch", "meditation", "gym_session", "reading", "journaling"} <= set(
        t.by_code
    )
    assert t.by_code["morning_stretch"].reported_type() == "timeline_morning_stretch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('code = "reading"', 'code = "Reading!"'), "code must be"),
        (('code = "walk"', 'code = "reading"'), "appears twice"),
        (('window = "06:00-09:00"', 'window = "6 to 9"'), "window"),
        (("xp = { INT = 30 }", "xp = { INT = -3 }"), "positive XP"),
        (("xp = { INT = 30 }", 'xp = { INT = "lots" }'), "Expected `int`"),
        (('title = "Reading"', 'title = "Reading"\nsurprise = 1'), "surprise"),
        (('[[items]]\ncode = "walk"', '[[items]\ncode = "walk"'), "line"),
    ],
)
def test_bad_timeline_files_fail_clearly(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    """Every kind of broken timeline file fails at startup with a message naming the problem."""
    p = tmp_path / "timeline.toml"
    p.write_text(DEFAULT_TIMELINE.read_text().replace(*change, 1))
    with pytest.raises(ConfigError, match=message):
        load_timeline(p)
