"""Oura API v2 daily documents from files (as the API returns them, or lists of documents)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec

from lifeops_contract.schemas import OuraDay, OuraScores
from mesh import ConfigError

KINDS = ("sleep", "readiness", "activity")


class _Doc(msgspec.Struct):
    day: dt.date
    score: int | None = None
    steps: int | None = None
    temperature_deviation: float | None = None
    contributors: dict[str, Any] = {}


class _Page(msgspec.Struct):
    data: list[_Doc]
    next_token: str | None = None


def _kind_of(path: Path, docs: list[_Doc]) -> str:
    name = path.name.lower()
    for kind in KINDS:
        if f"daily_{kind}" in name:
            return kind
    if any(d.steps is not None for d in docs):
        return "activity"
    if any(d.temperature_deviation is not None for d in docs):
        return "readiness"
    if any("deep_sleep" in d.contributors for d in docs):
        return "sleep"
    raise ConfigError(
        f"{path}: cannot tell whether this is daily_sleep, daily_readiness or "
        "daily_activity (name the file after its endpoint)"
    )


def _read(path: Path) -> list[_Doc]:
    raw = path.read_bytes()
    try:
        page = msgspec.json.decode(raw, type=_Page | list[_Doc])
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    else:
        return page.data if isinstance(page, _Page) else page
    raise ConfigError(
        f'{path}: expected an Oura API v2 page {{"data": [...]}} or a list of '
        "daily documents with `day` and `score`"
    )


def load_days(target: Path) -> list[OuraDay]:
    """Every day found in a file or a directory of *.json files, scores merged per day."""
    files = sorted(target.glob("*.json")) if target.is_dir() else [target]
    if not files:
        raise ConfigError(f"{target}: no JSON files")
    merged: dict[dt.date, dict[str, int | None]] = {}
    for path in files:
        docs = _read(path)
        kind = _kind_of(path, docs)
        for d in docs:
            merged.setdefault(d.day, {})[kind] = d.score
    return [
        OuraDay(date=day, scores=OuraScores(**scores)) for day, scores in sorted(merged.items())
    ]
