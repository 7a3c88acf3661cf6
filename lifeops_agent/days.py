"""Pure day and streak rules: local days in the user's time zone, consecutive-day streaks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mesh import HandlerError


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise HandlerError("invalid_timezone", f"unknown time zone {name[:64]!r}") from exc


def local_day(moment: dt.datetime, tz: ZoneInfo) -> dt.date:
    """The user's calendar day of an instant (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(tz).date()


def run_ending_at(days: set[dt.date], day: dt.date) -> int:
    """Consecutive completed days ending at `day` (0 when `day` itself is not completed)."""
    n = 0
    while day - dt.timedelta(days=n) in days:
        n += 1
    return n


def longest_run(days: Iterable[dt.date]) -> int:
    ordered = sorted(set(days))
    best = run = 0
    prev: dt.date | None = None
    for d in ordered:
        run = run + 1 if prev is not None and d - prev == dt.timedelta(days=1) else 1
        best = max(best, run)
        prev = d
    return best


def current_streak(days: set[dt.date], today: dt.date) -> int:
    """The live streak: it still counts today if yesterday was done; a missed day resets it."""
    if today in days:
        return run_ending_at(days, today)
    return run_ending_at(days, today - dt.timedelta(days=1))
