"""The Oura API v2 daily documents, as its `usercollection/daily_*` endpoints return them, and
their merge into one score set per day (a file import and an API sync read them alike)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import msgspec

from lifeops_contract.schemas import OuraDay, OuraScores

KINDS = ("sleep", "readiness", "activity")
ENDPOINTS = {kind: f"daily_{kind}" for kind in KINDS}


class Doc(msgspec.Struct):
    """One daily document; only what LifeOps reads (unknown fields are ignored)."""

    day: dt.date
    score: int | None = None
    steps: int | None = None
    temperature_deviation: float | None = None
    contributors: dict[str, Any] = {}


class Page(msgspec.Struct):
    """A page of a multiple-document response; `next_token` names the next one."""

    data: list[Doc]
    next_token: str | None = None


def merge(docs: Iterable[tuple[str, Doc]]) -> list[OuraDay]:
    """(kind, document) pairs -> one OuraDay per day, in date order."""
    merged: dict[dt.date, dict[str, int | None]] = {}
    for kind, d in docs:
        merged.setdefault(d.day, {})[kind] = d.score
    return [
        OuraDay(date=day, scores=OuraScores(**scores)) for day, scores in sorted(merged.items())
    ]
