"""The part of a user's history a streak needs: which window to read, and the runs in it.

A streak is a run of consecutive local days. The current streak needs the days back from
today until the first gap; a completion needs the run around its day (a past day that fills a
gap joins two runs); the best streak is kept per user and item (`lifeops_best_streaks`) and
only ever grows. So no request reads a user's whole history: a window of WINDOW days around
the days in question, widened (x4) only while a run reaches its edge (`fits`). Pure: the
repository reads the windows (repository.load_history, repository.load_batch).
"""

from __future__ import annotations

import datetime as dt

import msgspec

WINDOW = 64
ONE = dt.timedelta(days=1)


class Completion(msgspec.Struct, frozen=True):
    """A stored completion of an item on a user's local day."""

    item_code: str
    day: dt.date
    completed_at: dt.datetime
    activity_id: str
    streak: int
    result: str | None
    xp_pending: bool


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


def window(around: list[dt.date], today: dt.date, width: int) -> tuple[dt.date, dt.date]:
    """The days [lo, hi] to read: `width` days before the earliest day in question."""
    return min(*around, today) - width * ONE, max(*around, today) + ONE


def fits(h: History, items: list[str], around: list[dt.date], today: dt.date) -> bool:
    """Whether every item's runs at, before and after the days `around`, and up to `today`,
    lie inside what `h` read (else the window widens)."""
    return all(
        h.run_back(item, day) is not None
        and h.run_back(item, day - ONE) is not None  # the run a completion of `day` ends
        and h.run_forward(item, day) is not None
        and h.current(item, today) is not None
        for item in items
        for day in around
    )
