"""A strict reader for the small subset of YAML that the add-on's config.yaml and
translations/en.yaml keep to.

PyYAML is not a dependency of the project, so those files keep to block mappings and sequences,
quoted or plain one-line scalars and `[]`. This reader reads that subset and rejects anything
outside it, e.g. an unquoted `0.1.0` or `yes`, which YAML 1.1 readers such as the Supervisor's
turn into other types. tests/deploy/test_addon.py checks, where PyYAML is installed, that both
read the files alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

Yaml: TypeAlias = "bool | int | str | list[Yaml] | dict[str, Yaml] | None"


class YamlSubsetError(ValueError):
    """The text is outside the YAML subset these files keep to."""


@dataclass
class _Line:
    number: int
    indent: int
    text: str  # without the indentation


# Plain scalars that a YAML 1.1 reader (PyYAML, the Supervisor's) would not read as the string
# they look like: numbers and versions, dates, sexagesimals, yes/no/on/off, .inf. Quote them.
_AMBIGUOUS = re.compile(
    r"^(?:[-+]?\.?[0-9].*|[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)"
    r"|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|y|Y|n|N"
    r"|True|TRUE|False|FALSE|Null|NULL|=|<<)$"
)
_PLAIN_KEY = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+/(?:tcp|udp))$")
_INT = re.compile(r"^-?(?:0|[1-9][0-9]*)$")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def parse_yaml(text: str) -> Yaml:
    """The value of `text`; YamlSubsetError (naming the line) for anything outside the subset."""
    lines = _yaml_lines(text)
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end].number}: unexpected indentation")
    return value


def _yaml_lines(text: str) -> list[_Line]:
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        body = raw.lstrip(" ")
        if body.startswith("\t"):
            raise YamlSubsetError(f"line {number}: tab in the indentation")
        if not body.strip() or body.startswith("#"):
            continue
        if body.rstrip() == "---" and not lines and body == raw:
            continue
        lines.append(_Line(number, len(raw) - len(body), body.rstrip()))
    return lines


def _is_item(line: _Line) -> bool:
    return line.text == "-" or line.text.startswith("- ")


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Yaml, int]:
    if _is_item(lines[i]):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[Yaml, int]:
    result: dict[str, Yaml] = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        split = _split_key(line)
        if split is None:
            raise YamlSubsetError(f"line {line.number}: expected `key: value`")
        key, rest = split
        if key in result:
            raise YamlSubsetError(f"line {line.number}: duplicate key {key!r}")
        i += 1
        if rest:
            result[key] = _scalar(rest, line)
            continue
        nested = i < len(lines) and (
            lines[i].indent > indent or (lines[i].indent == indent and _is_item(lines[i]))
        )
        if nested:
            result[key], i = _block(lines, i, lines[i].indent)
        else:
            result[key] = None
    if i < len(lines) and lines[i].indent > indent:
        raise YamlSubsetError(f"line {lines[i].number}: unexpected indentation")
    return result, i


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[Yaml, int]:
    items: list[Yaml] = []
    while i < len(lines) and lines[i].indent == indent and _is_item(lines[i]):
        line = lines[i]
        rest = line.text[1:].lstrip(" ")
        if not rest or rest.startswith("#"):
            i += 1
            if i < len(lines) and lines[i].indent > indent:
                item, i = _block(lines, i, lines[i].indent)
                items.append(item)
            else:
                items.append(None)
        elif _split_key(_Line(line.number, 0, rest)) is not None:  # "- key: value": a mapping
            lines[i] = _Line(line.number, indent + len(line.text) - len(rest), rest)
            item, i = _mapping(lines, i, lines[i].indent)
            items.append(item)
        else:
            items.append(_scalar(rest, line))
            i += 1
    return items, i


def _split_key(line: _Line) -> tuple[str, str] | None:
    text = line.text
    if text.startswith(("'", '"')):
        key, end = _quoted(text, line)
        after = text[end:]
        if after == ":" or after.startswith((": ", ":\t")):
            return key, _drop_comment(after[1:].strip())
        return None
    match = re.match(r"^([^\s#'\"][^:]*?):(?:\s+(.*))?$", text)
    if match is None:
        return None
    key = match.group(1)
    if not _PLAIN_KEY.match(key):
        raise YamlSubsetError(f"line {line.number}: quote the key {key!r}")
    return key, _drop_comment((match.group(2) or "").strip())


def _drop_comment(rest: str) -> str:
    if rest.startswith("#"):
        return ""
    if rest.startswith(("'", '"')):
        return rest
    cut = rest.find(" #")
    return rest if cut < 0 else rest[:cut].rstrip()


def _scalar(text: str, line: _Line) -> Yaml:
    if text.startswith(("'", '"')):
        value, end = _quoted(text, line)
        tail = text[end:].strip()
        if tail and not tail.startswith("#"):
            raise YamlSubsetError(f"line {line.number}: text after a quoted string")
        return value
    text = _drop_comment(text)
    if text == "[]":
        return []
    if text == "{}":
        return {}
    if text[0] in "[]{}&*!|>%@`,?:-" or ": " in text or text.endswith(":"):
        raise YamlSubsetError(f"line {line.number}: {text!r} is outside the subset: quote it")
    if text in ("null", "~"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if _INT.match(text):
        return int(text)
    if _AMBIGUOUS.match(text):
        raise YamlSubsetError(f"line {line.number}: {text!r} is ambiguous in YAML 1.1: quote it")
    return text


def _quoted(text: str, line: _Line) -> tuple[str, int]:
    """The string of the quoted scalar at the start of `text`, and where it ends."""
    quote, out, i = text[0], [], 1
    while i < len(text):
        c = text[i]
        if quote == "'" and c == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == '"' and c == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in _ESCAPES:
                raise YamlSubsetError(f"line {line.number}: escape \\{escaped} outside the subset")
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        if quote == '"' and c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise YamlSubsetError(f"line {line.number}: unterminated string (one line only)")
