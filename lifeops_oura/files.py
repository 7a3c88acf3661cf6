"""Oura API v2 daily documents from files (as the API returns them, or lists of documents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from lifeops_contract.schemas import OuraDay
from lifeops_oura.documents import KINDS, Doc, Page, merge, read_docs
from mesh import ConfigError


def _kind_of(path: Path, docs: list[Doc]) -> str:
    name = path.name.lower()
    for kind in KINDS:
        if f"daily_{kind}" in name:
            return kind
    if any("steps" in d.hints for d in docs):
        return "activity"
    if any("temperature_deviation" in d.hints for d in docs):
        return "readiness"
    if any("deep_sleep" in d.hints for d in docs):
        return "sleep"
    raise ConfigError(
        f"{path}: cannot tell whether this is daily_sleep, daily_readiness or "
        "daily_activity (name the file after its endpoint)"
    )


def _read(path: Path) -> list[Doc]:
    raw = path.read_bytes()
    try:
        page = msgspec.json.decode(raw, type=Page | list[Any])
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    else:
        docs, _skipped = read_docs(page.data if isinstance(page, Page) else page)
        if docs or not (page.data if isinstance(page, Page) else page):
            return docs
    raise ConfigError(
        f'{path}: expected an Oura API v2 page {{"data": [...]}} or a list of '
        "daily documents with `day` and `score`"
    )


def load_days(target: Path) -> list[OuraDay]:
    """Every day found in a file or a directory of *.json files, scores merged per day."""
    files = sorted(target.glob("*.json")) if target.is_dir() else [target]
    if not files:
        raise ConfigError(f"{target}: no JSON files")
    found: list[tuple[str, Doc]] = []
    for path in files:
        docs = _read(path)
        kind = _kind_of(path, docs)
        found += [(kind, d) for d in docs]
    return merge(found)
