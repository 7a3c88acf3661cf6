"""A batch of completions, computed: pure (no I/O), over what `repository.load_batch` read.

The handler checks each request (`Ask`), the repository loads the users' time zones, admits
the users and reads their histories (`Placed` on their local days), `complete` decides every
completion in order (two completions of one user in a batch see each other, a past day that
fills a gap joins two runs), and `repository.write_batch` writes the result.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from lifeops_agent import days
from lifeops_agent.history import Completion, History
from lifeops_agent.timeline import TimelineItem
from mesh import keyed_uuid

Histories = dict[str, tuple[History, dict[str, int]]]
"""{user id: (the history around the batch's days, best streak per item)}"""


class Ask(msgspec.Struct, frozen=True):
    """A checked completion request: the `index`-th job of the batch."""

    index: int
    user_id: str
    item: TimelineItem
    moment: dt.datetime  # when it was done (aware, not in the future)
    now: dt.datetime


class Placed(msgspec.Struct, frozen=True):
    """A request placed on its user's local day."""

    ask: Ask
    tzname: str
    day: dt.date
    today: dt.date


class Done(msgspec.Struct, frozen=True):
    """A new completion, and the item's best streak once it counts."""

    placed: Placed
    completion: Completion
    best: int


class Already(msgspec.Struct, frozen=True):
    """The item was completed on that day before: the stored completion answers."""

    placed: Placed
    prior: Completion
    best: int


class Result(msgspec.Struct):
    """What a batch decided, in request order; `raised` is each (user, item)'s new best
    streak, `last` each user's latest placed request (whose today the timeline shows)."""

    outcomes: list[Done | Already]
    raised: dict[tuple[str, str], int]
    last: dict[str, Placed]

    @property
    def done(self) -> list[Done]:
        return [o for o in self.outcomes if isinstance(o, Done)]


def completion_id(key: bytes, user_id: str, item_code: str, day: dt.date) -> str:
    """Deterministic: the same user, item and local day is always the same activity; keyed
    with the installation's key, so no other client can compute (and pre-claim) it."""
    return keyed_uuid(key, f"completion:{user_id}:{item_code}:{day.isoformat()}")


def place(asks: list[Ask], zones: dict[str, str], default_timezone: str) -> list[Placed]:
    """Each request on its user's local day (the user's time zone, else the default)."""
    placed = []
    for a in asks:
        tzname = zones.get(a.user_id) or default_timezone
        zone = days.zone(tzname)
        day, today = days.local_day(a.moment, zone), days.local_day(a.now, zone)
        placed.append(Placed(a, tzname, day, today))
    return placed


def wanted(placed: list[Placed]) -> dict[str, tuple[list[dt.date], dt.date]]:
    """{user: (the days in question, today)}: the history windows a batch needs."""
    out: dict[str, tuple[list[dt.date], dt.date]] = {}
    for p in placed:
        out.setdefault(p.ask.user_id, ([], p.today))[0].append(p.day)
    return out


def complete(placed: list[Placed], histories: Histories, key: bytes) -> Result:
    """Every request in order; advances `histories` in place (each new completion and best
    streak is in them afterwards, for the timelines the batch restates)."""
    outcomes: list[Done | Already] = []
    for p in placed:
        history, best = histories[p.ask.user_id]
        code = p.ask.item.code
        prior = history.rows.get((code, p.day))
        if prior is not None:
            outcomes.append(Already(p, prior, best.get(code, 0)))
            continue
        activity_id = completion_id(key, p.ask.user_id, code, p.day)
        streak = (history.run_back(code, p.day - dt.timedelta(days=1)) or 0) + 1
        completion = Completion(code, p.day, p.ask.moment, activity_id, streak, None, True)
        history.add(completion)
        run = streak + (history.run_forward(code, p.day) or 0)  # a gap filled joins
        best[code] = max(best.get(code, 0), run)
        outcomes.append(Done(p, completion, best[code]))
    raised: dict[tuple[str, str], int] = {}
    for o in outcomes:
        if isinstance(o, Done):
            user_id, code = o.placed.ask.user_id, o.completion.item_code
            raised[(user_id, code)] = histories[user_id][1][code]
    last = {o.placed.ask.user_id: o.placed for o in outcomes if isinstance(o, Done)}
    return Result(outcomes, raised, last)
