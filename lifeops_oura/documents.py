"""The Oura API v2 daily documents, as its `usercollection/daily_*` endpoints return them, and
their merge into one score set per day (a file import and an API sync read them alike).

Lenient: only `day` and `score` are read. Any other field may be missing, null or of any type
(Oura adds and changes fields; `contributors` has come as null). A score may come as a float
(rounded) and anything that is not a number 0..100 is read as no score. A document without a
readable `day` cannot be used: it is skipped and counted, and the rest of its page is kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import msgspec

from lifeops_contract.schemas import OuraDay, OuraScores

KINDS = ("sleep", "readiness", "activity")
ENDPOINTS = {kind: f"daily_{kind}" for kind in KINDS}


class Doc(msgspec.Struct, frozen=True):
    """One usable daily document: its day, its score, and the names of its other fields and
    contributors (only to tell which endpoint a file came from)."""

    day: dt.date
    score: int | None = None
    hints: frozenset[str] = frozenset()


class Page(msgspec.Struct):
    """A page of a multiple-document response; `next_token` names the next one. The
    documents stay undecoded until `docs()`: one odd document does not reject its page."""

    data: list[Any]
    next_token: str | None = None

    def docs(self) -> tuple[list[Doc], int]:
        """(the usable documents, how many were skipped for want of a `day`)."""
        return read_docs(self.data)


def read_docs(items: Iterable[Any]) -> tuple[list[Doc], int]:
    found: list[Doc] = []
    skipped = 0
    for item in items:
        doc = read_doc(item)
        if doc is None:
            skipped += 1
        else:
            found.append(doc)
    return found, skipped


def read_doc(item: Any) -> Doc | None:
    """One document, or None when it has no readable `day`."""
    if not isinstance(item, dict):
        return None
    raw_day = item.get("day")
    try:
        day = dt.date.fromisoformat(raw_day) if isinstance(raw_day, str) else None
    except ValueError:
        day = None
    if day is None:
        return None
    hints = {str(k) for k in item}
    contributors = item.get("contributors")
    if isinstance(contributors, dict):
        hints |= {str(k) for k in contributors}
    return Doc(day=day, score=_score(item.get("score")), hints=frozenset(hints))


def _score(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or not 0 <= value <= 100:  # NaN, out of range
        return None
    return round(value)


def merge(docs: Iterable[tuple[str, Doc]]) -> list[OuraDay]:
    """(kind, document) pairs -> one OuraDay per day, in date order."""
    merged: dict[dt.date, dict[str, int | None]] = {}
    for kind, d in docs:
        merged.setdefault(d.day, {})[kind] = d.score
    return [
        OuraDay(date=day, scores=OuraScores(**scores)) for day, scores in sorted(merged.items())
    ]
