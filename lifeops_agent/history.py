"""The part of a user's history a streak needs, read from the database window by window.

A streak is a run of consecutive local days. The current streak needs the days back from
today until the first gap; a completion needs the run around its day (a past day that fills a
gap joins two runs); the best streak is kept per user and item (`lifeops_best_streaks`) and
only ever grows. So no request reads a user's whole history: a window of WINDOW days around
the days in question, widened (x4) only while a run reaches its edge.
"""

from __future__ import annotations

import datetime as dt

from lifeops_agent import repository
from lifeops_agent.repository import Completion
from mesh import Tx

WINDOW = 64
ONE = dt.timedelta(days=1)


class History:
    """A user's completions within [lo, hi], knowing whether older ones exist."""

    def __init__(
        self, rows: list[Completion], lo: dt.date, hi: dt.date, earliest: dt.date | None
    ) -> None:
        self.lo = lo
        self.hi = hi
        self.earliest = earliest
        self.by_item: dict[str, set[dt.date]] = {}
        self.rows: dict[tuple[str, dt.date], Completion] = {}
        for c in rows:
            self.by_item.setdefault(c.item_code, set()).add(c.day)
            self.rows[(c.item_code, c.day)] = c

    def add(self, c: Completion) -> None:
        self.by_item.setdefault(c.item_code, set()).add(c.day)
        self.rows[(c.item_code, c.day)] = c

    def _complete_back(self) -> bool:
        return self.earliest is None or self.lo <= self.earliest

    def run_back(self, item: str, day: dt.date) -> int | None:
        """Consecutive days ending at `day` (0 when `day` is not done); None when the run
        reaches back past what was read."""
        days = self.by_item.get(item, set())
        n = 0
        while day - n * ONE in days:
            n += 1
            if day - n * ONE < self.lo and not self._complete_back():
                return None
        return n

    def run_forward(self, item: str, day: dt.date) -> int | None:
        """Consecutive days after `day`; None when the run reaches past what was read."""
        days = self.by_item.get(item, set())
        n = 0
        while day + (n + 1) * ONE in days:
            n += 1
            if day + (n + 1) * ONE > self.hi:
                return None
        return n

    def current(self, item: str, today: dt.date) -> int | None:
        """The live streak: it still counts today if yesterday was done."""
        if today in self.by_item.get(item, set()):
            return self.run_back(item, today)
        return self.run_back(item, today - ONE)


async def load(
    tx: Tx, user_id: str, around: dt.date, today: dt.date, items: list[str]
) -> tuple[History, dict[str, int]]:
    """A window of history around `around` and `today`, wide enough that every item's run at
    `around`, after `around`, and up to `today` is inside it; with the best streaks."""
    earliest = await repository.first_day(tx, user_id)
    width = WINDOW
    while True:
        lo = min(around, today) - width * ONE
        hi = max(around, today) + ONE
        rows = await repository.completions_between(tx, user_id, lo, hi)
        history = History(rows, lo, hi, earliest)
        if all(_fits(history, i, around, today) for i in items):
            return history, await repository.best_streaks(tx, user_id)
        width *= 4


def _fits(h: History, item: str, around: dt.date, today: dt.date) -> bool:
    return (
        h.run_back(item, around) is not None
        and h.run_back(item, around - ONE) is not None  # the run a completion of `around` ends
        and h.run_forward(item, around) is not None
        and h.current(item, today) is not None
    )


async def load_many(
    tx: Tx, wanted: dict[str, tuple[list[dt.date], dt.date]], items: list[str]
) -> dict[str, tuple[History, dict[str, int]]]:
    """`load` for the users of a batch, {user: (the days in question, today)}: one query per
    table for all of them (a window per distinct span, usually one); a user whose runs reach
    past the window is read again alone, widening as `load` does."""
    users = sorted(wanted)
    earliest = await repository.first_days(tx, users)
    best = await repository.best_streaks_of(tx, users)
    spans: dict[tuple[dt.date, dt.date], list[str]] = {}
    for user, (around, today) in wanted.items():
        lo = min(*around, today) - WINDOW * ONE
        hi = max(*around, today) + ONE
        spans.setdefault((lo, hi), []).append(user)
    out: dict[str, tuple[History, dict[str, int]]] = {}
    for (lo, hi), group in spans.items():
        rows = await repository.completions_of(tx, group, lo, hi)
        for user in group:
            history = History(rows[user], lo, hi, earliest.get(user))
            around, today = wanted[user]
            if all(_fits(history, i, day, today) for i in items for day in around):
                out[user] = (history, best[user])
            else:  # a long run: this user's window widens alone
                out[user] = await _load_spanning(tx, user, around, today, items, earliest.get(user))
    return out


async def _load_spanning(
    tx: Tx,
    user_id: str,
    around: list[dt.date],
    today: dt.date,
    items: list[str],
    earliest: dt.date | None,
) -> tuple[History, dict[str, int]]:
    width = WINDOW * 4
    while True:
        lo = min(*around, today) - width * ONE
        hi = max(*around, today) + ONE
        history = History(
            await repository.completions_between(tx, user_id, lo, hi), lo, hi, earliest
        )
        if all(_fits(history, i, day, today) for i in items for day in around):
            return history, await repository.best_streaks(tx, user_id)
        width *= 4
