"""The Home Assistant app (add-on) configuration reference, restated as checks.

`config_errors(cfg)` reports what the reference (developers.home-assistant.io
docs/apps/configuration.md) and the Supervisor would reject or warn about in a parsed config.yaml;
`schema_errors`, `options_errors` and `value_errors` check the options schema and its defaults;
`translation_errors` checks translations/en.yaml against the config. Each returns a list of
one-line errors, empty when all is well.

The rules follow the Supervisor (home-assistant/supervisor, 2026-08): supervisor/apps/validate.py
(_SCHEMA_APP_CONFIG, RE_SERVICE, SCHEMA_ELEMENT), supervisor/apps/options.py
(RE_SCHEMA_ELEMENT), supervisor/const.py and supervisor/apps/const.py (the enums),
supervisor/validate.py (docker_ports, network_port).
"""

from __future__ import annotations

import re
from typing import Any

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
