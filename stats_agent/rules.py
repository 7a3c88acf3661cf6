"""The rules file (TOML): decoded into typed Structs, validated with errors that name the line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from mesh import ConfigError

DEFAULT_RULES = Path(__file__).resolve().parent / "default_rules.toml"
_STAT = re.compile(r"^[A-Z]{2,8}$")


class Game(msgspec.Struct, forbid_unknown_fields=True):
    stats: list[str]
    curve: Literal["habitica"] = "habitica"
    max_custom_xp: int = 10000


class ActivityRule(msgspec.Struct, forbid_unknown_fields=True):
    xp: dict[str, int]


class OuraRule(msgspec.Struct, forbid_unknown_fields=True):
    score: Literal["sleep", "readiness", "activity"]
    stat: str
    factor: float


class AchievementRule(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    title: str
    kind: Literal["activities", "character_level", "stat_xp", "streak"]
    threshold: int


class Rules(msgspec.Struct, forbid_unknown_fields=True):
    game: Game
    activities: dict[str, ActivityRule] = {}
    oura: list[OuraRule] = []
    achievements: list[AchievementRule] = []


def _line_of(text: str, path: list[str | int]) -> int | None:
    """Best effort: the line of `path` ($.a.b[2].c) in the TOML text, 1-based."""
    lines = text.splitlines()
    start = 0
    table: list[str] = []
    for part in path:
        if isinstance(part, int):
            header = f"[[{'.'.join(table)}]]"
            hits = [i for i, ln in enumerate(lines) if ln.strip() == header]
            if part < len(hits):
                start = hits[part]
            continue
        table.append(part)
        header = "[" + ".".join(table) + "]"
        for i in range(start, len(lines)):
            s = lines[i].strip()
            if (
                s in (header, f"[{header}]")
                or re.match(rf"^{re.escape(part)}\s*=", s)
                or (re.search(rf"\b{re.escape(part)}\s*=", s) and i >= start)
            ):
                start = i
                break
    return start + 1 if path else None


def _parse_path(message: str) -> list[str | int]:
    m = re.search(r"at `\$([^`]*)`", message)
    if not m:
        return []
    out: list[str | int] = []
    for tok in re.findall(r"\.([^.\[]+)|\[(\d+)\]|\['([^']+)'\]", m.group(1)):
        if tok[0]:
            out.append(tok[0])
        elif tok[1]:
            out.append(int(tok[1]))
        else:
            out.append(tok[2])
    return out


def _semantic_problems(rules: Rules) -> list[tuple[str, list[str | int]]]:
    out: list[tuple[str, list[str | int]]] = []
    stats = set(rules.game.stats)
    for s in rules.game.stats:
        if not _STAT.match(s):
            out.append((f"stat code {s!r} must be 2-8 capital letters", ["game", "stats"]))
    if rules.game.max_custom_xp < 1:
        out.append(("max_custom_xp must be positive", ["game", "max_custom_xp"]))
    for name, rule in rules.activities.items():
        if not rule.xp:
            out.append((f"activity {name!r} grants no XP", ["activities", name]))
        for stat, xp in rule.xp.items():
            if stat not in stats:
                out.append(
                    (f"activity {name!r}: unknown stat {stat!r}", ["activities", name, stat])
                )
            if xp <= 0:
                out.append(
                    (
                        f"activity {name!r}: XP for {stat} must be positive",
                        ["activities", name, stat],
                    )
                )
    for i, o in enumerate(rules.oura):
        if o.stat not in stats:
            out.append((f"oura rule: unknown stat {o.stat!r}", ["oura", i, "stat"]))
        if not 0 < o.factor <= 10:
            out.append(("oura rule: factor must be in (0, 10]", ["oura", i, "factor"]))
    seen: set[str] = set()
    for i, a in enumerate(rules.achievements):
        if a.code in seen:
            out.append((f"achievement code {a.code!r} appears twice", ["achievements", i, "code"]))
        seen.add(a.code)
        if a.threshold < 1:
            out.append(
                (
                    f"achievement {a.code!r}: threshold must be >= 1",
                    ["achievements", i, "threshold"],
                )
            )
    return out


def load_rules(path: Path | None = None) -> Rules:
    path = path or DEFAULT_RULES
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        rules = msgspec.convert(raw, Rules)
    except msgspec.ValidationError as exc:
        line = _line_of(text, _parse_path(str(exc)))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {exc}") from exc
    problems = _semantic_problems(rules)
    if problems:
        msgs = []
        for message, p in problems:
            line = _line_of(text, p)
            msgs.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        raise ConfigError("; ".join(msgs))
    return rules
