"""The pure middle of LifeOps' batches (no database, no broker): a batch of completions
decided by `streaks.complete` over the histories `repository.load_batch` reads, the history
windows (`history.window`, `history.fits`), and an Oura import's versions (`oura_days.plan`).
The stored effects of the same code are tested end to end in test_batch and test_history."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from lifeops_agent import days, history, oura_days, streaks
from lifeops_agent.history import Completion, History
from lifeops_agent.repository import StoredOuraDay
from lifeops_agent.timeline import TimelineItem
from lifeops_contract.schemas import OuraDay, OuraScores
from mesh import codec

KEY = b"k" * 32
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
WALK = TimelineItem(code="walk", title="Walk", xp={"STR": 5})
READ = TimelineItem(code="read", title="Read", xp={"INT": 5})
ONE = dt.timedelta(days=1)


def _ask(i: int, user: str, back: int, item: TimelineItem = WALK) -> streaks.Ask:
    return streaks.Ask(i, user, item, NOW - back * ONE, NOW)


def _stored(day: dt.date, code: str = "walk", streak: int = 1) -> Completion:
    at = dt.datetime.combine(day, dt.time(8), dt.UTC)
    return Completion(code, day, at, f"id-{code}-{day}", streak, None, False)


def _everything(rows: list[Completion]) -> History:
    """A history that read every day there is."""
    return History(rows, TODAY - 1000 * ONE, TODAY + ONE, None)


def test_place_uses_the_users_zone_else_the_default() -> None:
    late = dt.datetime(2026, 3, 10, 23, 30, tzinfo=dt.UTC)
    asks = [streaks.Ask(0, "tokyo", WALK, late, late), streaks.Ask(1, "plain", WALK, late, late)]
    placed = streaks.place(asks, {"tokyo": "Asia/Tokyo"}, "UTC")
    assert [(p.tzname, p.day, p.today) for p in placed] == [
        ("Asia/Tokyo", dt.date(2026, 3, 11), dt.date(2026, 3, 11)),
        ("UTC", dt.date(2026, 3, 10), dt.date(2026, 3, 10)),
    ]
    wanted = streaks.wanted(placed + streaks.place([_ask(2, "plain", 3)], {}, "UTC"))
    assert wanted == {
        "tokyo": ([dt.date(2026, 3, 11)], dt.date(2026, 3, 11)),
        "plain": ([dt.date(2026, 3, 10), dt.date(2026, 3, 7)], dt.date(2026, 3, 10)),
    }


def test_a_batch_sees_its_own_completions_and_a_filled_gap_joins_two_runs() -> None:
    """Stored: days 5..3 ago and yesterday. The batch: 2 days ago (joins both runs), today,
    today again (already done, by this batch), and another user's first."""
    rows = [_stored(TODAY - b * ONE, streak=4 - b + 2) for b in (5, 4, 3)]
    rows.append(_stored(TODAY - ONE))
    histories = {"u": (_everything(rows), {"walk": 3}), "v": (_everything([]), {})}
    asks = [_ask(0, "u", 2), _ask(1, "u", 0), _ask(2, "u", 0), _ask(3, "v", 0, READ)]
    result = streaks.complete(streaks.place(asks, {}, "UTC"), histories, KEY)
    first, second, third, other = result.outcomes
    assert isinstance(first, streaks.Done)
    assert (first.completion.streak, first.best) == (4, 5)  # 5..2 ago, then yesterday joins
    assert isinstance(second, streaks.Done)
    assert (second.completion.streak, second.best) == (6, 6)
    assert isinstance(third, streaks.Already) and third.prior == second.completion
    assert isinstance(other, streaks.Done) and (other.completion.streak, other.best) == (1, 1)
    assert result.raised == {("u", "walk"): 6, ("v", "read"): 1}
    assert {u: p.ask.index for u, p in result.last.items()} == {"u": 1, "v": 3}
    assert [d.placed.ask.index for d in result.done] == [0, 1, 3]
    assert first.completion.activity_id == streaks.completion_id(KEY, "u", "walk", first.placed.day)
    assert first.completion.activity_id != streaks.completion_id(b"x" * 32, "u", "walk", TODAY)
    assert histories["u"][0].current("walk", TODAY) == 6  # advanced in place


def test_an_earlier_completion_answers_with_its_stored_best() -> None:
    histories = {"u": (_everything([_stored(TODAY)]), {"walk": 9})}
    (only,) = streaks.complete(streaks.place([_ask(0, "u", 0)], {}, "UTC"), histories, KEY).outcomes
    assert isinstance(only, streaks.Already) and only.best == 9
    assert streaks.complete([], {}, KEY) == streaks.Result([], {}, {})


@given(st.lists(st.integers(0, 90), min_size=1, max_size=30, unique=True))
def test_streaks_of_a_scrambled_batch_are_the_rules_streaks(back: list[int]) -> None:
    """Days completed in any order in one batch: every new streak is the run ending at its
    day among the days completed before it; the best is the longest run of all."""
    histories: streaks.Histories = {"u": (_everything([]), {})}
    result = streaks.complete(
        streaks.place([_ask(i, "u", b) for i, b in enumerate(back)], {}, "UTC"), histories, KEY
    )
    seen: set[dt.date] = set()
    for b, o in zip(back, result.outcomes, strict=True):
        assert isinstance(o, streaks.Done)
        seen.add(TODAY - b * ONE)
        assert o.completion.streak == days.run_ending_at(seen, TODAY - b * ONE)
        assert o.best == days.longest_run(seen)
    assert result.raised == {("u", "walk"): days.longest_run(seen)}


def test_a_window_fits_only_when_every_run_is_inside_it() -> None:
    lo, hi = history.window([TODAY - 10 * ONE], TODAY, history.WINDOW)
    assert (lo, hi) == (TODAY - 74 * ONE, TODAY + ONE)
    run = [_stored(TODAY - b * ONE) for b in range(80)]  # a run older than the window
    inside = [r for r in run if lo <= r.day <= hi]
    assert not history.fits(History(inside, lo, hi, run[-1].day), ["walk"], [TODAY], TODAY)
    assert history.fits(History(inside, lo, hi, lo), ["walk"], [TODAY], TODAY)  # none older
    assert history.fits(History(run, TODAY - 100 * ONE, hi, run[-1].day), ["walk"], [TODAY], TODAY)


def _day(back: int, sleep: int | None, readiness: int | None = None) -> OuraDay:
    return OuraDay(date=TODAY - back * ONE, scores=OuraScores(sleep=sleep, readiness=readiness))


def test_an_oura_import_plans_new_days_and_next_revisions() -> None:
    """A new day is revision 0; a changed one its next revision with the scores it lacks kept;
    an unchanged one is not stored; a day twice in one import sees its first version."""
    stored = OuraScores(sleep=70, readiness=60)
    known = {TODAY - ONE: StoredOuraDay(codec.encode(stored).decode(), 2)}
    days_in = [_day(0, 80), _day(1, 75), _day(2, 50), _day(2, 50), _day(1, 75), _day(0, 81)]
    plan = oura_days.plan(known, days_in)
    assert [(TODAY - v.day).days for v in plan] == [0, 1, 2, 0]
    assert [v.revision for v in plan] == [0, 3, 0, 1]
    assert plan[1].scores == OuraScores(sleep=75, readiness=60)
    assert plan[3].scores == OuraScores(sleep=81)
    assert known[TODAY - ONE].revision == 2  # the caller's map is not changed
    assert oura_days.plan(known, [_day(1, None, 60)]) == []
