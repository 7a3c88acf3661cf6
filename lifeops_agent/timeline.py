"""The timeline file (TOML): routine items, validated at startup with clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from mesh import ConfigError

DEFAULT_TIMELINE = Path(__file__).resolve().parent / "default_timeline.toml"
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_STAT = re.compile(r"^[A-Z]{2,8}$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


class TimelineItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    code: str
    title: str
    xp: dict[str, int]
    window: str | None = None
    activity_type: str = ""

    def reported_type(self) -> str:
        return self.activity_type or f"timeline_{self.code}"


class TimelineFile(msgspec.Struct, forbid_unknown_fields=True):
    items: list[TimelineItem]


class Timeline:
    def __init__(self, items: list[TimelineItem]) -> None:
        self.items = items
        self.by_code = {i.code: i for i in items}


def load_timeline(path: Path | None = None) -> Timeline:
    path = path or DEFAULT_TIMELINE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        parsed = msgspec.convert(raw, TimelineFile)
    except OSError as exc:
        raise ConfigError(f"cannot read timeline file {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    problems: list[str] = []
    seen: set[str] = set()
    for n, item in enumerate(parsed.items, 1):
        where = f"{path}: item {n} ({item.code!r})"
        if not _CODE.match(item.code):
            problems.append(f"{where}: code must be 1-48 of [a-z0-9_], starting with a letter")
        if item.code in seen:
            problems.append(f"{where}: code appears twice")
        seen.add(item.code)
        if not item.title.strip():
            problems.append(f"{where}: title is empty")
        if not item.xp:
            problems.append(f"{where}: xp grants nothing")
        for stat, xp in item.xp.items():
            if not _STAT.match(stat) or xp <= 0:
                problems.append(f"{where}: xp {stat} = {xp} (stat codes like STR, positive XP)")
        if item.window is not None and not _WINDOW.match(item.window):
            problems.append(f"{where}: window {item.window!r} must look like 06:00-09:00")
    if not parsed.items:
        problems.append(f"{path}: no items")
    if problems:
        raise ConfigError("; ".join(problems))
    return Timeline(parsed.items)
