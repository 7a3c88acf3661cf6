"""The Home Assistant app (add-on) in deploy/homeassistant-addon/.

- The run script against a local stand-in for the Supervisor's services API (stdlib HTTP server
  on 127.0.0.1): the exact `lifeops-mesh up` command and environment it execs, and one-line
  failures for a wrong token, no MQTT service, an unreachable or slow Supervisor.
- The run script starting the real mesh against a real Mosquitto whose account comes from the
  stand-in, as in Home Assistant with the Mosquitto broker app.
- config.yaml and translations/en.yaml checked against the app configuration reference
  (developers.home-assistant.io docs/apps/configuration.md; the Supervisor's
  supervisor/apps/validate.py and options.py, whose rules are restated here).

PyYAML is not a dependency of the project, so the two YAML files keep to a small subset of YAML
(block mappings and sequences, quoted or plain one-line scalars, `[]`) that the strict parser
below reads and that rejects anything outside it, e.g. an unquoted `0.1.0` or `yes`, which
YAML 1.1 readers such as the Supervisor's turn into other types. Where PyYAML is installed, a
test also checks that both parsers read the files alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from lifeops_mesh import registry
from mesh import parse_broker_url

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "deploy" / "homeassistant-addon"
RUN_PY = ADDON / "run.py"

TOKEN = "0123456789abcdef0123456789abcdef"
PASSWORD = "p@ss:w/rd %#?&"
ENCODED_PASSWORD = "p%40ss%3Aw%2Frd%20%25%23%3F%26"
METRICS_PORT = 9181
ERROR_PREFIX = "lifeops-mesh app: error: "

# What the official Mosquitto app publishes (home-assistant/addons
# mosquitto/rootfs/etc/services.d/mosquitto/discovery), as the v1 route returns it.
MOSQUITTO_SERVICE: dict[str, object] = {
    "host": "core-mosquitto",
    "port": 1883,
    "ssl": False,
    "protocol": "3.1.1",
    "username": "addons",
    "password": PASSWORD,
    "addon": "core_mosquitto",
}


# -- a strict reader for the YAML subset of config.yaml and translations/en.yaml ---------------

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


def load(name: str) -> Any:
    return parse_yaml((ADDON / name).read_text(encoding="utf-8"))


# -- the app configuration reference --------------------------------------------------------
# Supervisor (home-assistant/supervisor, 2026-08): supervisor/apps/validate.py
# (_SCHEMA_APP_CONFIG, RE_SERVICE, SCHEMA_ELEMENT), supervisor/apps/options.py
# (RE_SCHEMA_ELEMENT), supervisor/const.py and supervisor/apps/const.py (the enums),
# supervisor/validate.py (docker_ports, network_port).

KNOWN_KEYS = frozenset(
    "name version slug description arch machine url startup boot init stage ports "
    "ports_description watchdog webui ingress ingress_port ingress_entry ingress_stream "
    "panel_icon panel_title panel_admin homeassistant host_network host_pid host_ipc host_uts "
    "host_dbus devices udev tmpfs map environment privileged apparmor full_access audio video "
    "gpio usb uart devicetree kernel_modules realtime hassio_api hassio_role homeassistant_api "
    "stdin legacy docker_api auth_api services discovery backup_exclude backup_pre backup_post "
    "backup options schema image ulimits timeout journald breaking_versions".split()
)
DEPRECATED_KEYS = {"advanced": "ignored since 2026.03", "codenotary": "no longer used"}
REQUIRED_KEYS = ("name", "version", "slug", "description", "arch")
BOOL_KEYS = frozenset(
    "init ingress ingress_stream panel_admin host_network host_pid host_ipc host_uts host_dbus "
    "udev tmpfs full_access audio video gpio usb uart devicetree kernel_modules realtime "
    "hassio_api homeassistant_api stdin legacy docker_api auth_api journald".split()
)
ARCH = ("aarch64", "amd64")  # ARCH_ALL
ARCH_DEPRECATED = ("armhf", "armv7", "i386")
CHOICES = {
    "startup": ("initialize", "system", "services", "application", "once"),  # AppStartup
    "boot": ("auto", "manual", "manual_only"),  # AppBootConfig
    "stage": ("stable", "experimental", "deprecated"),  # AppStage
    "backup": ("hot", "cold"),  # AppBackupMode
    "hassio_role": ("default", "homeassistant", "backup", "manager", "admin"),  # ROLE_ALL
}
MAP_TYPES = (  # MappingType, without the legacy ones
    "data config ssl local_apps backup share media homeassistant_config all_app_configs "
    "app_config".split()
)
MAP_TYPES_LEGACY = ("addons", "all_addon_configs", "addon_config")  # deprecated 2026.07
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_PORT_KEY = re.compile(r"^\d+(?:/tcp|/udp)?$")
RE_WATCHDOG = re.compile(r"^(?:https?|\[PROTO:\w+\]|tcp):\/\/\[HOST\]:(\[PORT:\d+\]|\d+).*$")
RE_WEBUI = re.compile(r"^(?:https?|\[PROTO:\w+\]):\/\/\[HOST\]:\[PORT:\d+\].*$")
RE_VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.-]+)?$")  # this project's convention
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
SCHEMA_MAX_DEPTH = 2  # "Nested arrays and dictionaries are supported with a maximum depth of two"


def config_errors(cfg: Any) -> list[str]:
    """What the reference (and the Supervisor) would reject or warn about in `cfg`."""
    if not isinstance(cfg, dict):
        return ["config.yaml is not a mapping"]
    errors = [f"missing required key {k!r}" for k in REQUIRED_KEYS if k not in cfg]
    for key in cfg:
        if key in DEPRECATED_KEYS:
            errors.append(f"{key!r} is deprecated ({DEPRECATED_KEYS[key]})")
        elif key not in KNOWN_KEYS:
            errors.append(f"unknown key {key!r} (the Supervisor drops it silently)")
    for key in ("name", "description"):
        if key in cfg and not (isinstance(cfg[key], str) and cfg[key].strip()):
            errors.append(f"{key} must be a non-empty string")
    if "version" in cfg and not (
        isinstance(cfg["version"], str) and RE_VERSION.match(cfg["version"])
    ):
        errors.append(f"version must be a quoted version string, not {cfg['version']!r}")
    if "slug" in cfg and not (isinstance(cfg["slug"], str) and RE_SLUG.match(cfg["slug"])):
        errors.append(f"slug {cfg['slug']!r} does not match {RE_SLUG.pattern}")
    arch = cfg.get("arch")
    if "arch" in cfg:
        if not isinstance(arch, list) or not arch or len(set(map(str, arch))) != len(arch):
            errors.append("arch must be a non-empty list without duplicates")
        else:
            for a in arch:
                if a in ARCH_DEPRECATED:
                    errors.append(f"arch {a!r} is deprecated")
                elif a not in ARCH:
                    errors.append(f"arch {a!r} is not one of {ARCH}")
    for key in BOOL_KEYS & cfg.keys():
        if not isinstance(cfg[key], bool):
            errors.append(f"{key} must be true or false, not {cfg[key]!r}")
    for key, allowed in CHOICES.items():
        if key in cfg and cfg[key] not in allowed:
            errors.append(f"{key} {cfg[key]!r} is not one of {allowed}")
    errors += _services_errors(cfg.get("services", []))
    errors += _map_errors(cfg.get("map", []))
    errors += _ports_errors(cfg)
    for key, pattern in (("watchdog", RE_WATCHDOG), ("webui", RE_WEBUI)):
        if key in cfg and not (isinstance(cfg[key], str) and pattern.match(cfg[key])):
            errors.append(f"{key} {cfg[key]!r} does not match {pattern.pattern}")
    if "timeout" in cfg and not (
        isinstance(cfg["timeout"], int)
        and not isinstance(cfg["timeout"], bool)
        and 10 <= cfg["timeout"] <= 300
    ):
        errors.append(f"timeout must be an integer from 10 to 300, not {cfg['timeout']!r}")
    if "url" in cfg and not (
        isinstance(cfg["url"], str) and re.match(r"^https?://\S+$", cfg["url"])
    ):
        errors.append(f"url {cfg['url']!r} is not a URL")
    for key in ("backup_exclude", "discovery", "devices"):
        if key in cfg and not (
            isinstance(cfg[key], list) and all(isinstance(v, str) for v in cfg[key])
        ):
            errors.append(f"{key} must be a list of strings")
    errors += options_errors(cfg.get("options", {}), cfg.get("schema", {}))
    return errors


def _services_errors(services: Any) -> list[str]:
    if not isinstance(services, list):
        return ["services must be a list"]
    errors = [
        f"service {s!r} does not match {RE_SERVICE.pattern}"
        for s in services
        if not (isinstance(s, str) and RE_SERVICE.match(s))
    ]
    names = [s.split(":")[0] for s in services if isinstance(s, str)]
    if len(names) != len(set(names)):
        errors.append("a service is listed twice")
    return errors


def _map_errors(mapping: Any) -> list[str]:
    if not isinstance(mapping, list):
        return ["map must be a list"]
    errors = []
    for entry in mapping:
        if not isinstance(entry, dict) or "type" not in entry:
            errors.append(f"map entry {entry!r} needs a `type` (the string form is legacy)")
            continue
        if entry["type"] in MAP_TYPES_LEGACY:
            errors.append(f"map type {entry['type']!r} is deprecated")
        elif entry["type"] not in MAP_TYPES:
            errors.append(f"map type {entry['type']!r} is not one of {MAP_TYPES}")
        if not isinstance(entry.get("read_only", True), bool):
            errors.append("map read_only must be true or false")
        if "path" in entry and not (
            isinstance(entry["path"], str)
            and entry["path"].startswith("/")
            and entry["path"] != "/"
        ):
            errors.append(f"map path {entry['path']!r} must be an absolute path, not /")
        errors += [
            f"map entry key {k!r} is unknown"
            for k in entry
            if k not in ("type", "read_only", "path")
        ]
    return errors


def _ports_errors(cfg: dict[str, Any]) -> list[str]:
    errors = []
    ports = cfg.get("ports", {})
    if not isinstance(ports, dict):
        return ["ports must be a mapping"]
    for key, host in ports.items():
        if not RE_PORT_KEY.match(key):
            errors.append(f"port {key!r} does not match {RE_PORT_KEY.pattern}")
        if host is not None and not (
            isinstance(host, int) and not isinstance(host, bool) and 1 <= host <= 65535
        ):
            errors.append(f"host port of {key} must be null or 1-65535, not {host!r}")
    described = cfg.get("ports_description", {})
    if not isinstance(described, dict):
        return [*errors, "ports_description must be a mapping"]
    errors += [
        f"ports_description {k!r} is not a port in ports" for k in described if k not in ports
    ]
    return errors


def schema_errors(schema: Any) -> list[str]:
    """`schema` against the documented syntax: element types, list and dict nesting."""
    if schema is False:
        return []
    if not isinstance(schema, dict):
        return ["schema must be a mapping or false"]
    errors: list[str] = []
    for key, element in schema.items():
        errors += _element_errors(key, element, 0)
    return errors


def _element_errors(path: str, element: Any, depth: int) -> list[str]:
    if isinstance(element, str):
        return _type_errors(path, element)
    if depth >= SCHEMA_MAX_DEPTH:
        return [f"{path}: nested deeper than {SCHEMA_MAX_DEPTH}"]
    if isinstance(element, list):
        if len(element) != 1:
            return [f"{path}: a list schema holds exactly one element type"]
        inner = element[0]
        if isinstance(inner, list):
            return [f"{path}: a list may not directly contain a list"]
        return _element_errors(f"{path}[]", inner, depth + 1)
    if isinstance(element, dict) and element:
        return [e for k, v in element.items() for e in _element_errors(f"{path}.{k}", v, depth + 1)]
    return [f"{path}: {element!r} is not a schema element"]


def _type_errors(path: str, typ: str) -> list[str]:
    m = RE_SCHEMA_ELEMENT.match(typ)
    if m is None or typ.rstrip("?") == "":
        return [f"{path}: unknown type {typ!r}"]
    errors = []
    for kind in ("s", "p", "i", "f"):
        low, high = m.group(f"{kind}_min"), m.group(f"{kind}_max")
        if low is not None and high is not None and float(low) > float(high):
            errors.append(f"{path}: {typ!r} has min > max")
    if m.group("match") is not None:
        try:
            re.compile(m.group("match"))
        except re.error as exc:
            errors.append(f"{path}: {typ!r} is not a valid regular expression: {exc}")
    if m.group("list") is not None:
        choices = m.group("list").split("|")
        if "" in choices or len(set(choices)) != len(choices):
            errors.append(f"{path}: {typ!r} has an empty or repeated choice")
    return errors


def _optional(element: Any) -> bool:
    """Optional like the Supervisor's _check_missing_options: a `?` type, or a list of one."""
    if isinstance(element, list) and element:
        element = element[0]
    return isinstance(element, str) and element.endswith("?")


def options_errors(options: Any, schema: Any) -> list[str]:
    """Options and schema agree: each option has a schema entry and a valid default; each
    required entry has a default (so the app starts without a form to fill in), and each
    optional (`?`) entry has none ("do not define any default value": the reference)."""
    if not isinstance(options, dict):
        return ["options must be a mapping"]
    errors = schema_errors(schema)
    if errors or schema is False:
        return errors
    for key, value in options.items():
        if key not in schema:
            errors.append(f"option {key!r} has no schema entry")
        else:
            errors += value_errors(key, schema[key], value)
    for key, element in schema.items():
        if _optional(element) and key in options:
            errors.append(f"optional {key!r} must not have a default in options")
        if not _optional(element) and key not in options:
            errors.append(f"required {key!r} has no default in options")
    return errors


def value_errors(path: str, element: Any, value: Any) -> list[str]:
    """`value` against a (valid) schema element, as the Supervisor validates options."""
    if isinstance(element, list):
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [e for i, v in enumerate(value) for e in value_errors(f"{path}[{i}]", element[0], v)]
    if isinstance(element, dict):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not a mapping"]
        errors = [f"{path}.{k}: not in the schema" for k in value if k not in element]
        errors += [
            e
            for k, v in value.items()
            if k in element
            for e in value_errors(f"{path}.{k}", element[k], v)
        ]
        return errors + [
            f"{path}.{k}: missing"
            for k, t in element.items()
            if k not in value and not _optional(t)
        ]
    m = RE_SCHEMA_ELEMENT.match(element)
    assert m is not None
    typ = element.rstrip("?")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok: bool
    if typ.startswith(("str", "password")):
        low, high = (m.group("s_min") or m.group("p_min")), (m.group("s_max") or m.group("p_max"))
        ok = (
            isinstance(value, str)
            and (low is None or len(value) >= int(low))
            and (high is None or len(value) <= int(high))
        )
    elif typ.startswith("int"):
        ok = (
            is_int
            and (m.group("i_min") is None or value >= int(m.group("i_min")))
            and (m.group("i_max") is None or value <= int(m.group("i_max")))
        )
    elif typ.startswith("float"):
        ok = (
            (is_int or isinstance(value, float))
            and (m.group("f_min") is None or value >= float(m.group("f_min")))
            and (m.group("f_max") is None or value <= float(m.group("f_max")))
        )
    elif typ == "bool":
        ok = isinstance(value, bool)
    elif typ == "port":
        ok = is_int and 1 <= value <= 65535
    elif typ == "email":
        ok = isinstance(value, str) and re.match(r"^[^@\s]+@[^@\s]+$", value) is not None
    elif typ == "url":
        ok = isinstance(value, str) and re.match(r"^[a-z][a-z0-9+.-]*://\S+$", value) is not None
    elif typ.startswith("match("):
        ok = isinstance(value, str) and re.match(m.group("match"), value) is not None
    elif typ.startswith("list("):
        ok = isinstance(value, str) and value in m.group("list").split("|")
    else:  # device
        ok = isinstance(value, str)
    return [] if ok else [f"{path}: {value!r} is not a valid {element}"]


def translation_errors(translations: Any, cfg: dict[str, Any]) -> list[str]:
    """translations/en.yaml (SCHEMA_APP_TRANSLATIONS): a name for every option, none for
    options that do not exist, a description for every port."""
    if not isinstance(translations, dict):
        return ["en.yaml is not a mapping"]
    errors = [
        f"unknown top-level key {k!r}"
        for k in translations
        if k not in ("configuration", "network")
    ]
    configuration = translations.get("configuration") or {}
    schema = cfg.get("schema") or {}
    errors += [f"option {k!r} has no translation" for k in schema if k not in configuration]
    for key, entry in configuration.items():
        if key not in schema:
            errors.append(f"translation for {key!r}, which is not an option")
        if not isinstance(entry, dict) or not (
            isinstance(entry.get("name"), str) and entry["name"].strip()
        ):
            errors.append(f"translation of {key!r} has no name")
            continue
        if not isinstance(entry.get("description", ""), str):
            errors.append(f"description of {key!r} is not a string")
        errors += [
            f"translation of {key!r}: unknown key {k!r}"
            for k in entry
            if k not in ("name", "description", "fields")
        ]
    network = translations.get("network") or {}
    ports = cfg.get("ports") or {}
    errors += [f"network {k!r} is not a port of the app" for k in network if k not in ports]
    described = {**(cfg.get("ports_description") or {}), **network}
    errors += [f"port {k!r} has no description" for k in ports if k not in described]
    return errors


# -- a stand-in for the Supervisor's services API -------------------------------------------


@dataclass
class Supervisor:
    """Answers GET /services/mqtt like supervisor/api/services.py get_service_v1 behind the
    security middleware: no token 401, an unknown token 403 (plain text, as aiohttp's
    HTTPUnauthorized and HTTPForbidden), no provider 400 "Service not enabled"."""

    token: str = TOKEN
    service: dict[str, object] | None = field(default_factory=lambda: dict(MOSQUITTO_SERVICE))
    wrong_token_status: int = 403
    fail_status: int | None = None  # answer every request with this status
    fail_message: str = "Unknown error, see Supervisor logs"
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


def _handler(sup: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            sup.requests.append((self.path, auth))
            time.sleep(sup.delay)
            if auth is None:
                self._send(401, b"401: Unauthorized", "text/plain")
            elif auth != f"Bearer {sup.token}":
                status = sup.wrong_token_status
                reason = "Unauthorized" if status == 401 else "Forbidden"
                self._send(status, f"{status}: {reason}".encode(), "text/plain")
            elif sup.fail_status is not None:
                self._error(sup.fail_status, sup.fail_message)
            elif self.path != "/services/mqtt":
                self._error(404, "Service does not exist")
            elif sup.service is None:
                self._error(400, "Service not enabled")
            else:
                body = json.dumps({"result": "ok", "data": sup.service}).encode()
                self._send(200, body, "application/json")

        def _error(self, status: int, message: str) -> None:
            body = json.dumps({"result": "error", "message": message}).encode()
            self._send(status, body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sup))
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sup.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield sup
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- running the script ---------------------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    argv: list[str] | None  # what the exec'd program got; None: nothing was started
    env: dict[str, str] | None

    def error(self, *needles: str) -> str:
        """The one-line error of a failed run, which names every needle."""
        assert self.code == 1, (self.code, self.stdout, self.stderr)
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith(ERROR_PREFIX), lines[0]
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert self.argv is None, "the mesh was started after all"
        return lines[0]


CAPTURE = """\
#!{python}
import json, os, sys
with open(os.environ["CAPTURE_FILE"], "w", encoding="utf-8") as f:
    json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, f)
"""


class App:
    """The run script with a given options.json and environment, exec'ing a program that
    records its argv and environment instead of the mesh."""

    def __init__(self, tmp_path: Path, supervisor: Supervisor) -> None:
        self.tmp = tmp_path
        self.supervisor = supervisor
        self.capture = tmp_path / "fake-lifeops-mesh"
        self.capture.write_text(CAPTURE.format(python=sys.executable), encoding="utf-8")
        self.capture.chmod(0o755)
        self.options_file = tmp_path / "options.json"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SUPERVISOR_API": self.supervisor.url,
            "SUPERVISOR_TOKEN": TOKEN,
            "LIFEOPS_ADDON_OPTIONS": str(self.options_file),
            "LIFEOPS_ADDON_EXEC": str(self.capture),
            "LIFEOPS_ADDON_RETRY_DELAY": "0.01",
            "LIFEOPS_ADDON_SSL_DIR": str(self.tmp / "ssl"),
            "TZ": "Europe/Berlin",
            "CAPTURE_FILE": str(self.tmp / "captured.json"),
        }

    def run(self, options: dict[str, Any] | None = None, **env: str | None) -> Run:
        if options is not None:
            self.options_file.write_text(json.dumps(options), encoding="utf-8")
        full = self.env()
        for key, value in env.items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        captured = Path(full["CAPTURE_FILE"])
        captured.unlink(missing_ok=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(RUN_PY)], env=full, capture_output=True, text=True, timeout=60
        )
        seconds = time.monotonic() - started
        record = json.loads(captured.read_text(encoding="utf-8")) if captured.exists() else None
        for secret in (PASSWORD, ENCODED_PASSWORD, TOKEN):
            assert secret not in proc.stdout + proc.stderr, f"{secret!r} in the output"
        return Run(
            code=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            seconds=seconds,
            argv=record["argv"] if record else None,
            env=record["env"] if record else None,
        )


@pytest.fixture
def app(tmp_path: Path, supervisor: Supervisor) -> App:
    return App(tmp_path, supervisor)


OPTIONS = {
    "users": ["alice", "bob"],
    "timezone": "America/New_York",
    "discovery_prefix": "lifeops_test",
}


# -- the run script -------------------------------------------------------------------------


def test_execs_the_mesh_with_the_broker_of_the_supervisors_mqtt_service(
    app: App, supervisor: Supervisor
) -> None:
    """Options and the MQTT service become exactly `lifeops-mesh up --broker
    mqtt://addons:<URL-encoded password>@core-mosquitto:1883 --data /data --metrics-port 9181`
    and LIFEOPS_* variables; the token is sent as bearer token and not passed on."""
    run = app.run(OPTIONS)
    assert run.code == 0, run.stderr
    broker = f"mqtt://addons:{ENCODED_PASSWORD}@core-mosquitto:1883"
    assert run.argv == [
        str(app.capture),
        "up",
        "--broker",
        broker,
        "--data",
        "/data",
        "--metrics-port",
        str(METRICS_PORT),
    ]
    assert supervisor.requests == [("/services/mqtt", f"Bearer {TOKEN}")]
    assert run.env is not None
    lifeops = {k: v for k, v in run.env.items() if k.startswith("LIFEOPS_")}
    assert lifeops == {
        "LIFEOPS_TIMEZONE": "America/New_York",
        "LIFEOPS_HA_USERS": "alice,bob",
        "LIFEOPS_HA_DISCOVERY_PREFIX": "lifeops_test",
        "LIFEOPS_METRICS_BIND": "0.0.0.0",
    }
    assert "SUPERVISOR_TOKEN" not in run.env
    assert run.env["PYTHONUNBUFFERED"] == "1"
    # The mesh's own parser gets the password back, byte for byte.
    parsed = parse_broker_url(broker)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.tls) == (
        "addons",
        PASSWORD,
        "core-mosquitto",
        1883,
        False,
    )
    assert "broker mqtt://addons:***@core-mosquitto:1883" in run.stdout
    assert "core_mosquitto" in run.stdout


def test_defaults_home_assistants_time_zone_and_no_users(app: App) -> None:
    """With the options the Supervisor writes by default ({"users": []}): Home Assistant's time
    zone (TZ), no users, the discovery prefix left to the mesh (an inherited one removed)."""
    run = app.run({"users": []}, TZ="Asia/Tokyo", LIFEOPS_HA_DISCOVERY_PREFIX="stale")
    assert run.code == 0, run.stderr
    assert run.env is not None
    assert run.env["LIFEOPS_TIMEZONE"] == "Asia/Tokyo"
    assert run.env["LIFEOPS_HA_USERS"] == ""
    assert "LIFEOPS_HA_DISCOVERY_PREFIX" not in run.env
    assert "users: none yet" in run.stdout


def test_oura_tokens_reach_lifeops_and_are_never_printed(app: App) -> None:
    """Option oura_tokens (user:token): LifeOps syncs those users, each token in its own
    variable; inherited Oura variables are dropped; no token appears in the app's output."""
    options = {"users": [], "oura_tokens": ["alice:tok-A1", "run-club:tok-B2"]}
    run = app.run(options, LIFEOPS_OURA_USERS="stale", LIFEOPS_OURA_TOKEN_STALE="old")
    assert run.code == 0, run.stderr
    assert run.env is not None
    oura = {k: v for k, v in run.env.items() if k.startswith("LIFEOPS_OURA_")}
    assert oura == {
        "LIFEOPS_OURA_USERS": "alice,run-club",
        "LIFEOPS_OURA_TOKEN_ALICE": "tok-A1",
        "LIFEOPS_OURA_TOKEN_RUN_CLUB": "tok-B2",
    }
    assert "tok-" not in run.stdout + run.stderr


@pytest.mark.parametrize("tz", [None, "", "Not/AZone", "CET-1CEST"])
def test_time_zone_falls_back_to_utc(app: App, tz: str | None) -> None:
    """No option and no usable TZ: UTC."""
    run = app.run({"users": ["alice"]}, TZ=tz)
    assert run.code == 0, run.stderr
    assert run.env is not None and run.env["LIFEOPS_TIMEZONE"] == "UTC"


def test_ssl_service_gives_mqtts_and_the_ca_file(app: App, supervisor: Supervisor) -> None:
    """ssl true: mqtts://, and broker_ca_file (relative: under /ssl) as LIFEOPS_BROKER_CA_FILE."""
    supervisor.service = {**MOSQUITTO_SERVICE, "ssl": True, "port": 8883}
    (app.tmp / "ssl" / "lifeops").mkdir(parents=True)
    ca = app.tmp / "ssl" / "lifeops" / "ca.pem"
    ca.write_text("not checked here\n", encoding="utf-8")
    run = app.run({"users": [], "broker_ca_file": "lifeops/ca.pem"})
    assert run.code == 0, run.stderr
    assert run.argv is not None and run.env is not None
    assert run.argv[3] == f"mqtts://addons:{ENCODED_PASSWORD}@core-mosquitto:8883"
    assert parse_broker_url(run.argv[3]).tls
    assert run.env["LIFEOPS_BROKER_CA_FILE"] == str(ca)

    missing = app.run({"users": [], "broker_ca_file": "/nowhere/ca.pem"})
    missing.error("broker_ca_file", "/nowhere/ca.pem")


def test_ca_file_is_ignored_without_tls(app: App) -> None:
    """A CA file for a broker without TLS is said and not passed on."""
    run = app.run({"users": [], "broker_ca_file": "/nowhere/ca.pem"}, LIFEOPS_BROKER_CA_FILE="x")
    assert run.code == 0, run.stderr
    assert run.env is not None and "LIFEOPS_BROKER_CA_FILE" not in run.env
    assert "broker_ca_file /nowhere/ca.pem unused" in run.stdout


def test_service_without_credentials(app: App, supervisor: Supervisor) -> None:
    """A provider without an account (anonymous broker): a URL without user and password."""
    supervisor.service = {"host": "broker.local", "port": "1884", "ssl": False}
    run = app.run({"users": []})
    assert run.code == 0, run.stderr
    assert run.argv is not None and run.argv[3] == "mqtt://broker.local:1884"


@pytest.mark.parametrize("status", [401, 403])
def test_wrong_token_fails_at_once(app: App, supervisor: Supervisor, status: int) -> None:
    """A token the Supervisor refuses: one line, exit 1, asked once (no retry can help)."""
    supervisor.wrong_token_status = status
    run = app.run(OPTIONS, SUPERVISOR_TOKEN="not-the-token")
    run.error(f"HTTP {status}", "SUPERVISOR_TOKEN")
    assert supervisor.requests == [("/services/mqtt", "Bearer not-the-token")]


def test_missing_token_fails_without_asking(app: App, supervisor: Supervisor) -> None:
    """No SUPERVISOR_TOKEN: one line naming it, and no request."""
    app.run(OPTIONS, SUPERVISOR_TOKEN=None).error("SUPERVISOR_TOKEN is not set")
    assert supervisor.requests == []


def test_no_mqtt_service_is_asked_again_then_named(app: App, supervisor: Supervisor) -> None:
    """No broker app provides MQTT (400 "Service not enabled"): asked 5 times (the broker app
    may be starting), then one line that says to install and start Mosquitto."""
    supervisor.service = None
    run = app.run(OPTIONS)
    run.error("Service not enabled", "Mosquitto", "after 5 attempts")
    assert len(supervisor.requests) == 5
    assert run.stdout.count("asking again") == 4


def test_app_without_access_to_the_mqtt_service(app: App, supervisor: Supervisor) -> None:
    """403 with the Supervisor's message (an app config without `services: [mqtt:need]`)."""
    supervisor.fail_status, supervisor.fail_message = 403, "No access to mqtt service!"
    app.run(OPTIONS).error("HTTP 403: No access to mqtt service!", "mqtt:need")
    assert len(supervisor.requests) == 1


def test_supervisor_errors_are_retried_a_bounded_number_of_times(
    app: App, supervisor: Supervisor
) -> None:
    """5xx: asked 5 times, then one line with the status."""
    supervisor.fail_status = 503
    app.run(OPTIONS).error("HTTP 503", "after 5 attempts")
    assert len(supervisor.requests) == 5


def test_unreachable_supervisor(app: App) -> None:
    """Nothing listens: 5 attempts with growing waits, then one line."""
    url = f"http://127.0.0.1:{free_port()}"
    run = app.run(OPTIONS, SUPERVISOR_API=url, LIFEOPS_ADDON_RETRY_DELAY="0.1")
    run.error("does not answer", url, "after 5 attempts")
    assert run.stdout.count("asking again") == 4
    assert 1.0 <= run.seconds < 10  # waits of 0.1 + 0.2 + 0.3 + 0.4 s


def test_slow_supervisor_times_out(app: App, supervisor: Supervisor) -> None:
    """A Supervisor that does not answer in time: each request ends after the timeout."""
    supervisor.delay = 3.0
    run = app.run(OPTIONS, LIFEOPS_ADDON_TIMEOUT="0.2")
    run.error("does not answer", "timed out", "after 5 attempts")
    assert len(supervisor.requests) == 5
    assert run.seconds < 3.0


def test_sigterm_while_waiting_for_the_supervisor_exits_cleanly(
    app: App, supervisor: Supervisor
) -> None:
    """The app stopped before the mesh runs (Supervisor slow to answer) exits 0 at once, as the
    Supervisor expects of an app that handles SIGTERM."""
    supervisor.delay = 5.0
    app.options_file.write_text(json.dumps(OPTIONS), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(RUN_PY)], env=app.env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not supervisor.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert supervisor.requests, "the script never asked the Supervisor"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(2) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_the_app_folds_user_ids_as_the_mesh_does() -> None:
    """run.py runs before the mesh is importable: its copy of the rule that makes two ids one
    person's is the mesh's (lifeops_contract.ids.fold_user_id)."""
    import importlib.util

    from lifeops_contract.ids import fold_user_id

    spec = importlib.util.spec_from_file_location("addon_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses look themselves up there
    try:
        spec.loader.exec_module(run)
    finally:
        del sys.modules[spec.name]
    for uid in ("alice", "Alice", "run-club", "Run_Club", "A-b_C-9", "0F2C-aa"):
        assert run.fold(uid) == fold_user_id(uid)
    assert run.fold("Run-Club") == run.fold("run_club")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"users": [], "timezone": "Europe/Berln"}, ("timezone", "Europe/Berln")),
        ({"users": ["alice,bob"]}, ("users", "alice,bob")),
        ({"users": "alice"}, ("users", "list")),
        ({"users": [], "discovery_prefix": "home/#"}, ("discovery_prefix",)),
        ({"users": [], "oura_tokens": ["alice"]}, ("oura_tokens", "alice", "user:token")),
        ({"users": [], "oura_tokens": ["bad user:s3cret"]}, ("oura_tokens", "entry 1")),
        # One person's two spellings would share a token variable (or HA entity ids).
        (
            {"users": [], "oura_tokens": ["run-club:tok-1", "Run_Club:tok-2"]},
            ("oura_tokens", "'Run_Club' and 'run-club' are one user"),
        ),
        (
            {"users": [], "oura_tokens": ["alice:tok-1", "alice:tok-2"]},
            ("oura_tokens", "'alice' is listed twice"),
        ),
        ({"users": ["alice", "Alice"]}, ("users", "'Alice' and 'alice' are one user")),
        ([], ("JSON object",)),
    ],
)
def test_bad_options_fail_in_one_line(
    app: App, supervisor: Supervisor, options: Any, needles: tuple[str, ...]
) -> None:
    """Options the mesh cannot use stop the app before anything is asked or started."""
    app.options_file.write_text(json.dumps(options), encoding="utf-8")
    app.run().error(*needles)
    assert supervisor.requests == []


def test_missing_or_broken_options_file(app: App) -> None:
    """No options.json, or one that is not JSON: one line naming the file."""
    app.run().error(str(app.options_file), "does not exist")
    app.options_file.write_text("{", encoding="utf-8")
    app.run().error(str(app.options_file))


def test_a_program_that_cannot_start(app: App) -> None:
    """exec failing (the mesh not installed) is one line too."""
    app.run(OPTIONS, LIFEOPS_ADDON_EXEC="/nonexistent/lifeops-mesh").error(
        "cannot start /nonexistent/lifeops-mesh"
    )


# -- config.yaml and translations against the reference -------------------------------------


def test_yaml_subset_reader() -> None:
    """The reader reads the subset, and refuses what YAML 1.1 would read otherwise."""
    text = (
        "---\n# comment\na: 1\nb: \"x: y # z\"  # comment\nc:\n  - one\n  - 'it''s'\n"
        "d:\n- k: v\n  n: null\ne: []\nf: true\n9181/tcp: ~\n"
    )
    assert parse_yaml(text) == {
        "a": 1,
        "b": "x: y # z",
        "c": ["one", "it's"],
        "d": [{"k": "v", "n": None}],
        "e": [],
        "f": True,
        "9181/tcp": None,
    }
    for bad in (
        "version: 0.1.0\n",
        "boot: yes\n",
        "a: [1, 2]\n",
        "a: |\n  x\n",
        "a: b: c\n",
        "a: b\na: c\n",
        "a: b\n  c: d\n",
        "\ta: b\n",
        "a: &x b\n",
        "a: 2026-01-01\n",
    ):
        with pytest.raises(YamlSubsetError):
            parse_yaml(bad)


def test_yaml_subset_reader_agrees_with_pyyaml() -> None:
    """PyYAML (what the Supervisor reads them with) and the strict reader read both alike."""
    import yaml

    for name in ("config.yaml", "translations/en.yaml"):
        assert yaml.safe_load((ADDON / name).read_text(encoding="utf-8")) == load(name), name


def test_config_follows_the_app_configuration_reference() -> None:
    """config.yaml: required keys, known keys only, allowed values and types, options and
    schema in the documented syntax, each option with a schema entry and the reverse."""
    cfg = load("config.yaml")
    assert config_errors(cfg) == []
    assert cfg["services"] == ["mqtt:need"]
    assert cfg["init"] is False  # s6-overlay v3 base image
    assert set(cfg["schema"]) == {
        "users", "timezone", "discovery_prefix", "broker_ca_file", "oura_tokens"
    }  # fmt: skip


def _mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    cfg = load("config.yaml")
    change(cfg)
    return dict(cfg)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda c: c.pop("name"), "missing required key 'name'"),
        (lambda c: c.pop("arch"), "missing required key 'arch'"),
        (lambda c: c.update(version=1), "version must be a quoted version string"),
        (lambda c: c.update(slug="lifeops mesh"), "slug 'lifeops mesh'"),
        (lambda c: c.update(arch=["amd64", "armv7"]), "arch 'armv7' is deprecated"),
        (lambda c: c.update(arch=["x86"]), "arch 'x86' is not one of"),
        (lambda c: c.update(startup="after"), "startup 'after'"),
        (lambda c: c.update(boot="always"), "boot 'always'"),
        (lambda c: c.update(init="false"), "init must be true or false"),
        (lambda c: c.update(services=["mqtt:needs"]), "service 'mqtt:needs'"),
        (lambda c: c.update(services=["mqtt"]), "service 'mqtt'"),
        (lambda c: c.update(servics=["mqtt:need"]), "unknown key 'servics'"),
        (lambda c: c.update(codenotary="x@y"), "'codenotary' is deprecated"),
        (lambda c: c.update(map=["ssl"]), "needs a `type`"),
        (
            lambda c: c.update(map=[{"type": "addon_config"}]),
            "map type 'addon_config' is deprecated",
        ),
        (lambda c: c.update(ports={"9181": 70000}), "must be null or 1-65535"),
        (lambda c: c.update(watchdog="tcp://localhost:9181"), "watchdog"),
        (lambda c: c.update(timeout=5), "timeout must be an integer from 10 to 300"),
        (lambda c: c["schema"].update(users=["strr"]), "unknown type 'strr'"),
        (lambda c: c["schema"].update(users=[["str"]]), "may not directly contain a list"),
        (lambda c: c["schema"].update(timezone="str"), "required 'timezone' has no default"),
        (
            lambda c: c["options"].update(timezone="UTC"),
            "optional 'timezone' must not have a default",
        ),
        (lambda c: c["options"].update(colour="red"), "option 'colour' has no schema entry"),
        (lambda c: c["options"].update(users=["a b"]), "users[0]: 'a b' is not a valid"),
        (lambda c: c["schema"].update(users=["match([)"]), "not a valid regular expression"),
        (lambda c: c["schema"].update(level="int(10,1)"), "min > max"),
        (lambda c: c["schema"].update(level="list(a||b)"), "empty or repeated choice"),
    ],
)
def test_checker_catches_mistakes(change: Callable[[dict[str, Any]], object], error: str) -> None:
    """The checker is not vacuous: each mistake in a copy of config.yaml is reported."""
    errors = config_errors(_mutated(change))
    assert any(error in e for e in errors), errors


@pytest.mark.parametrize(
    "typ",
    [
        "str",
        "str?",
        "str(3,)",
        "str(,64)",
        "bool",
        "int",
        "int(1,10)",
        "int(-5,)",
        "float(,5.5)",
        "port",
        "password",
        "email",
        "url",
        "list(debug|info|warning|error)?",
        "match(^\\w*$)",
        "device(subsystem=tty)",
    ],
)
def test_schema_syntax_accepts_the_documented_types(typ: str) -> None:
    """Every type the reference lists passes the checker."""
    assert schema_errors({"x": typ, "y": [typ], "z": [{"a": typ}]}) == []


@pytest.mark.parametrize(
    "element",
    [
        "string",
        "int(1,2,3)",
        "list()",
        "",
        "?",
        "str(a,b)",
        5,
        True,
        [],
        ["str", "int"],
        {"a": {"b": {"c": "str"}}},
        [{"a": ["str"], "b": {"c": "str"}}],
    ],
)
def test_schema_syntax_rejects_the_rest(element: Any) -> None:
    """Unknown types and lists or dicts nested beyond the documented depth are reported."""
    assert schema_errors({"x": element}) != []


def test_translations_name_every_option_and_port() -> None:
    """translations/en.yaml names and describes every option and every port, and nothing else."""
    assert translation_errors(load("translations/en.yaml"), load("config.yaml")) == []
    broken = {"configuration": {"users": {"name": "Users"}, "colour": {"name": "x"}}}
    errors = translation_errors(broken, load("config.yaml"))
    assert "option 'timezone' has no translation" in errors
    assert "translation for 'colour', which is not an option" in errors
    assert "port '9181/tcp' has no description" in errors


def test_the_repository_has_no_other_app_config() -> None:
    """The Supervisor takes every config.yaml/.yml/.json in an added repository for an app
    (supervisor/store/data.py _find_app_configs: not under dot folders or rootfs/)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "rootfs"]
        found += [
            Path(folder, f).relative_to(ROOT).as_posix()
            for f in files
            if re.fullmatch(r"config\.(?:yaml|yml|json)", f)
        ]
    assert found == ["deploy/homeassistant-addon/config.yaml"]


def test_version_is_the_packages() -> None:
    """The app's version is the package's: the Dockerfile installs the wheel of that version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert load("config.yaml")["version"] == project["project"]["version"]


def test_dockerfile_follows_the_app_conventions() -> None:
    """A pinned Home Assistant Python base image with Python >= 3.11, the labels the reference
    asks for, the wheel of BUILD_VERSION, files that exist, and the run script as CMD."""
    text = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 1 and "$" not in froms[0], froms  # no BUILD_FROM: see the comment
    image = re.fullmatch(
        r"ghcr\.io/home-assistant/base-python:(\d+)\.(\d+)-alpine(\d+\.\d+)", froms[0]
    )
    assert image is not None, froms[0]
    assert (int(image.group(1)), int(image.group(2))) >= (3, 11)
    assert 'io.hass.type="app"' in text
    arch = re.search(r'io\.hass\.arch="([^"]+)"', text)
    assert arch is not None and arch.group(1).split("|") == load("config.yaml")["arch"]
    assert 'io.hass.version="${BUILD_VERSION}"' in text
    assert "lifeops_mesh-${BUILD_VERSION" in text  # only the wheel of the app's version
    for source in re.findall(r"^COPY (\S+) \S+$", text, re.M):
        assert (ADDON / source).exists(), source
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None and json.loads(cmd.group(1))[-1] == "/run.py"
    assert re.search(r"^COPY run\.py /run\.py$", text, re.M)


def test_ports_watchdog_and_run_script_agree() -> None:
    """One metrics port per agent from 9181 (`up` numbers them in start order), the first of
    them watched by the Supervisor; the run script's default is that port (see the first test)."""
    cfg = load("config.yaml")
    agents = len(registry.names())
    assert list(cfg["ports"]) == [f"{METRICS_PORT + n}/tcp" for n in range(agents)]
    assert all(host is None for host in cfg["ports"].values())  # not on the host unless asked
    assert cfg["watchdog"] == f"tcp://[HOST]:[PORT:{METRICS_PORT}]"


def test_docs_cover_install_options_and_data() -> None:
    """DOCS.md explains every option, the broker it needs and where data lives."""
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    for option in load("config.yaml")["schema"]:
        assert f"`{option}`" in docs, option
    for needle in ("Mosquitto", "/data", "repository", "prepare.sh", "MQTT discovery"):
        assert needle in docs, needle


# -- the real mesh against a real Mosquitto, account from the stand-in ----------------------


@dataclass
class MeshApp:
    proc: subprocess.Popen[str]
    lines: list[str]
    broker_port: int
    data: Path
    prefix: str

    def retained(self, topic: str, within: float) -> list[str]:
        """Topics of the retained messages matching `topic`, asking again until there are some
        or `within` seconds have passed (a message published meanwhile comes live, without the
        retain flag, and ends one round empty)."""
        deadline = time.monotonic() + within
        while True:
            topics = self._retained_once(topic)
            if topics or time.monotonic() > deadline:
                return topics

    def _retained_once(self, topic: str, wait: int = 1) -> list[str]:
        out = subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.broker_port),
                "-u",
                "addons",
                "-P",
                PASSWORD,
                "-t",
                topic,
                "-F",
                "%t",
                "-W",
                str(wait),
                "--retained-only",
            ],
            capture_output=True,
            text=True,
            timeout=wait + 10,
        )
        return out.stdout.split()


def _tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(
            f"{name} not found: install the Debian packages mosquitto and mosquitto-clients"
        )
    return found


@pytest.fixture(scope="module")
def mesh_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshApp]:
    """Mosquitto with one account, `addons`, as the Mosquitto app has; the stand-in hands it
    out; the run script starts the installed `lifeops-mesh up` with it."""
    tmp = tmp_path_factory.mktemp("addon-e2e")
    _tool("mosquitto_sub")
    subprocess.run(
        [_tool("mosquitto_passwd"), "-c", "-b", str(tmp / "pw"), "addons", PASSWORD],
        check=True,
        capture_output=True,
    )
    port = free_port()
    (tmp / "mosquitto.conf").write_text(
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {tmp / 'pw'}\npersistence false\n",
        encoding="utf-8",
    )
    broker = subprocess.Popen(
        [_tool("mosquitto"), "-c", str(tmp / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sup = Supervisor(service={**MOSQUITTO_SERVICE, "host": "127.0.0.1", "port": port})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sup))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mesh = Path(sys.executable).with_name("lifeops-mesh")
    assert mesh.exists(), f"{mesh}: the package is not installed in this environment"
    (tmp / "options.json").write_text(
        json.dumps(
            {"users": ["alice"], "timezone": "Europe/Berlin", "discovery_prefix": "lifeops_e2e"}
        ),
        encoding="utf-8",
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SUPERVISOR_API": f"http://127.0.0.1:{server.server_port}",
        "SUPERVISOR_TOKEN": TOKEN,
        "LIFEOPS_ADDON_OPTIONS": str(tmp / "options.json"),
        "LIFEOPS_ADDON_DATA": str(tmp / "data"),
        "LIFEOPS_ADDON_METRICS_PORT": "0",  # free ports: tests may run side by side
        "LIFEOPS_ADDON_EXEC": str(mesh),
        "TZ": "UTC",
    }
    (tmp / "data").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(RUN_PY)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("mesh is up"):
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(600):
            if up.wait(0.1) or proc.poll() is not None:
                break
        assert up.is_set(), "the mesh did not come up:\n" + "\n".join(lines)
        yield MeshApp(proc, lines, port, tmp / "data", "lifeops_e2e")
    finally:
        for p in (proc, broker):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
        server.shutdown()
        server.server_close()


def test_the_whole_mesh_runs_on_the_broker_the_supervisor_names(mesh_app: MeshApp) -> None:
    """Every agent online against the broker account from the services API (the password's
    URL-encoding survives into a real login), SQLite under the data dir, Home Assistant
    discovery under the configured prefix, and the password in no output and no log."""
    for agent in registry.names():
        assert any(line.startswith(f"agent {agent}: online") for line in mesh_app.lines), agent
        assert (mesh_app.data / f"{agent}.db").exists(), agent
    configs = mesh_app.retained(f"{mesh_app.prefix}/binary_sensor/lifeops-mesh/+/config", 10)
    assert sorted(configs) == sorted(
        f"{mesh_app.prefix}/binary_sensor/lifeops-mesh/{a}/config" for a in registry.names()
    )
    written = "\n".join(mesh_app.lines) + (mesh_app.data / "mesh.log").read_text(encoding="utf-8")
    assert PASSWORD not in written and ENCODED_PASSWORD not in written


def test_users_option_creates_their_devices_at_start(mesh_app: MeshApp) -> None:
    """A user named in the options gets a device with buttons before doing anything."""
    buttons = mesh_app.retained(f"{mesh_app.prefix}/button/lifeops_alice/+/config", 8)
    assert buttons, "no button for alice"


def test_a_completion_grants_xp(mesh_app: MeshApp) -> None:
    """A button press (Home Assistant publishes the button's payload on lifeops/timeline/complete)
    reaches Stats as XP: the user's character sheet appears."""
    subprocess.run(
        [
            "mosquitto_pub",
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            str(mesh_app.broker_port),
            "-u",
            "addons",
            "-P",
            PASSWORD,
            "-t",
            "lifeops/timeline/complete",
            "-m",
            '{"user_id":"erin","item_code":"walk"}',
        ],
        check=True,
        timeout=10,
    )
    if not mesh_app.retained("lifeops/timeline/erin", 10):  # not the known failure: a real one
        raise RuntimeError("the completion was not recorded")
    assert mesh_app.retained("stats/character/erin", 8), "no XP for erin"


def test_sigterm_stops_the_mesh_cleanly_within_the_grace_time(mesh_app: MeshApp) -> None:
    """SIGTERM (Docker stop through s6-overlay) reaches the mesh (the script exec'd it): a clean
    stop, exit 0, within the Dockerfile's S6_KILL_GRACETIME. Runs last in this module."""
    grace = re.search(
        r"^ENV S6_KILL_GRACETIME=(\d+)$", (ADDON / "Dockerfile").read_text(encoding="utf-8"), re.M
    )
    assert grace is not None
    started = time.monotonic()
    mesh_app.proc.send_signal(signal.SIGTERM)
    code = mesh_app.proc.wait(30)
    seconds = time.monotonic() - started
    time.sleep(0.2)  # the reader thread takes the last lines
    print(f"stopped in {seconds:.2f} s")
    assert code == 0, mesh_app.lines[-5:]
    assert "mesh stopped" in mesh_app.lines
    assert seconds < int(grace.group(1)) / 1000, seconds
    timeout = load("config.yaml")["timeout"]
    assert int(grace.group(1)) / 1000 < timeout  # s6 gives up before Docker kills
