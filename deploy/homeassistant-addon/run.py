#!/usr/bin/env python3
"""Start LifeOps Mesh inside the Home Assistant app (add-on).

1. Read the options the Supervisor wrote to /data/options.json.
2. Ask the Supervisor for the MQTT service (GET /services/mqtt with SUPERVISOR_TOKEN as bearer
   token): host, port, username, password and ssl of the broker app (Mosquitto). A Supervisor
   that does not answer, answers 5xx, or has no MQTT service yet (the broker app is starting) is
   asked again, a few times; anything else ends the script at once.
3. Replace this process with `lifeops-mesh up --broker URL --data /data --metrics-port 9181`, the
   options passed as LIFEOPS_* environment variables.

Every failure is one line on stderr and exit status 1. The broker password goes into the mesh's
command line (the only way `up` takes it), never into output.

Set by the Supervisor: SUPERVISOR_TOKEN, TZ (Home Assistant's time zone). For tests and runs
outside Home Assistant:
  SUPERVISOR_API              default http://supervisor
  LIFEOPS_ADDON_OPTIONS       default /data/options.json
  LIFEOPS_ADDON_DATA          default /data
  LIFEOPS_ADDON_SSL_DIR       default /ssl (where a relative broker_ca_file is looked up)
  LIFEOPS_ADDON_METRICS_PORT  default 9181 (0: free ports)
  LIFEOPS_ADDON_EXEC          default lifeops-mesh (the program exec'd)
  LIFEOPS_ADDON_TIMEOUT       default 10 (seconds per request to the Supervisor)
  LIFEOPS_ADDON_RETRY_DELAY   default 2 (seconds; the n-th retry waits n times this)
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

NAME = "lifeops-mesh app"
ATTEMPTS = 5
# The mesh's user ids (lifeops_contract.ids): UUIDs and slugs of [A-Za-z0-9_-], 1-64 characters.
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def fold(user_id: str) -> str:
    """lifeops_contract.ids.fold_user_id: ids equal after folding case and -/_ are one person's
    (one Oura token variable, one set of Home Assistant entity ids)."""
    return user_id.lower().replace("-", "_")


def one_person_each(user_ids: list[str], option: str) -> None:
    """Two entries for one person in an option (the same id twice, or two spellings of it):
    refused, never the last one silently kept."""
    seen: dict[str, str] = {}
    for user in user_ids:
        first = seen.get(fold(user))
        seen[fold(user)] = user
        if first is not None:
            same = "is listed twice" if first == user else f"and {first!r} are one user"
            raise Failure(
                f"option {option}: {user!r} {same} (ids equal after folding case and - / _ "
                "share an Oura token and Home Assistant entities); keep one"
            )


# An MQTT topic prefix without wildcards or empty levels.
PREFIX = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")


class Failure(Exception):
    """A reason to stop, said in one line."""


class Retry(Failure):
    """A failure that may go away by itself (Supervisor restarting, broker app still starting)."""


@dataclass(frozen=True)
class Options:
    users: tuple[str, ...]
    timezone: str | None
    discovery_prefix: str | None
    broker_ca_file: str | None
    oura_tokens: tuple[tuple[str, str], ...] = ()  # (user id, personal access token)


@dataclass(frozen=True)
class Broker:
    url: str
    shown: str  # the URL with the password masked
    tls: bool
    provider: str | None


def note(text: str) -> None:
    print(f"{NAME}: {text}", flush=True)


def read_options(path: Path) -> Options:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Failure(
            f"{path} does not exist (the Supervisor writes the app's options there)"
        ) from None
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read the options in {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise Failure(f"{path} does not hold a JSON object")
    users = raw.get("users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise Failure("option users must be a list of user ids")
    cleaned = tuple(dict.fromkeys(u.strip() for u in users if u.strip()))
    for user in cleaned:
        if not USER_ID.match(user):
            raise Failure(f"option users: {user[:70]!r} is not a user id (1-64 of A-Z a-z 0-9 _ -)")
    one_person_each(list(cleaned), "users")
    prefix = _optional_str(raw, "discovery_prefix")
    if prefix is not None and not PREFIX.match(prefix):
        raise Failure(f"option discovery_prefix: {prefix[:70]!r} is not an MQTT topic prefix")
    return Options(
        oura_tokens=_oura_tokens(raw.get("oura_tokens") or []),
        users=cleaned,
        timezone=_optional_str(raw, "timezone"),
        discovery_prefix=prefix,
        broker_ca_file=_optional_str(raw, "broker_ca_file"),
    )


def _oura_tokens(entries: Any) -> tuple[tuple[str, str], ...]:
    """`user:token` entries; errors name the entry by its user, never show a token."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise Failure("option oura_tokens must be a list of user:token entries")
    out: list[tuple[str, str]] = []
    for n, entry in enumerate(entries, 1):
        user, sep, token = entry.strip().partition(":")
        if not sep or not USER_ID.match(user) or not token or any(c.isspace() for c in token):
            shown = user[:64] if USER_ID.match(user) else f"entry {n}"
            raise Failure(f"option oura_tokens: {shown} is not user:token (the token one word)")
        out.append((user, token))
    one_person_each([u for u, _ in out], "oura_tokens")
    return tuple(out)


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Failure(f"option {key} must be text")
    return value.strip() or None


def time_zone(option: str | None, env: Mapping[str, str]) -> str:
    """The option, else Home Assistant's time zone (TZ, set by the Supervisor), else UTC."""
    if option is not None:
        if not _is_zone(option):
            raise Failure(f"option timezone: {option[:70]!r} is not an IANA time zone name")
        return option
    system = env.get("TZ", "").strip()
    return system if system and _is_zone(system) else "UTC"


def _is_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def fetch_mqtt_service(api: str, token: str, *, timeout: float, delay: float) -> dict[str, Any]:
    """The `data` of GET {api}/services/mqtt, asking up to ATTEMPTS times while it may help."""
    url = api.rstrip("/") + "/services/mqtt"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _get_service(url, token, timeout)
        except Retry as exc:
            if attempt == ATTEMPTS:
                raise Retry(f"{exc} (gave up after {ATTEMPTS} attempts)") from None
            wait = delay * attempt
            note(f"{exc}; asking again in {wait:g} s (attempt {attempt} of {ATTEMPTS})")
            time.sleep(wait)
    raise AssertionError("unreachable")


def _get_service(url: str, token: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    # No proxies: the Supervisor is on the app's own network.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        finally:
            exc.close()
        raise _refusal(exc.code, _message(body)) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unknown host, timeout
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        said = reason or type(exc).__name__
        raise Retry(f"the Supervisor at {url} does not answer ({said})") from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise Failure(f"the Supervisor's answer from {url} is not JSON") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or answer.get("result") != "ok" or not isinstance(data, dict):
        raise Failure(f"unexpected answer from {url}: {_message(body) or 'no message'}")
    return data


def _refusal(status: int, message: str) -> Failure:
    said = f"HTTP {status}" + (f": {message}" if message else "")
    if status == 401:
        return Failure(f"the Supervisor refused the token ({said}): SUPERVISOR_TOKEN is wrong")
    if status == 403:
        return Failure(
            f"the Supervisor denied the MQTT service ({said}): a wrong SUPERVISOR_TOKEN, or an "
            "app config without `services: [mqtt:need]`"
        )
    if status == 400:  # "Service not enabled": no broker app provides MQTT (yet)
        return Retry(
            f"the Supervisor has no MQTT service ({said}): install and start the Mosquitto "
            "broker app (or another app that provides MQTT)"
        )
    if status >= 500:
        return Retry(f"the Supervisor failed ({said})")
    return Failure(f"the Supervisor cannot give the MQTT service ({said})")


def _message(body: bytes) -> str:
    """The Supervisor's error message ({"result": "error", "message": ...}), else the body's
    first line; short and on one line."""
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        text = answer["message"]
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""


def broker_from(service: Mapping[str, Any]) -> Broker:
    """mqtt[s]://user:password@host:port from the MQTT service, user and password URL-encoded."""
    host = service.get("host")
    if not isinstance(host, str) or not host.strip():
        raise Failure("the Supervisor's MQTT service has no host")
    host = host.strip()
    port = service.get("port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Failure(f"the Supervisor's MQTT service has no valid port ({port!r})")
    ssl = service.get("ssl", False)
    tls = ssl.strip().lower() == "true" if isinstance(ssl, str) else ssl is True
    username, password = service.get("username"), service.get("password")
    userinfo = shown = ""
    if isinstance(username, str) and username:
        userinfo = shown = quote(username, safe="")
        if isinstance(password, str):
            userinfo += ":" + quote(password, safe="")
            shown += ":***"
        userinfo, shown = userinfo + "@", shown + "@"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    base = f"{'mqtts' if tls else 'mqtt'}://"
    provider = service.get("addon") or service.get("app")
    return Broker(
        url=f"{base}{userinfo}{host}:{port}",
        shown=f"{base}{shown}{host}:{port}",
        tls=tls,
        provider=provider if isinstance(provider, str) else None,
    )


def ca_file(option: str | None, broker: Broker, ssl_dir: Path) -> str | None:
    if option is None:
        return None
    if not broker.tls:
        note(f"broker_ca_file {option} unused: the broker's MQTT service does not use TLS")
        return None
    path = Path(option) if Path(option).is_absolute() else ssl_dir / option
    if not path.is_file():
        raise Failure(f"option broker_ca_file: {path} is not a file")
    return str(path)


def _number(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(env.get(key) or default)
    except ValueError:
        raise Failure(f"{key} must be a number, not {env[key]!r}") from None


def command(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The mesh's argv and environment, from the options and the Supervisor's MQTT service."""
    options = read_options(Path(env.get("LIFEOPS_ADDON_OPTIONS") or "/data/options.json"))
    zone = time_zone(options.timezone, env)
    token = env.get("SUPERVISOR_TOKEN", "").strip()
    if not token:
        raise Failure("SUPERVISOR_TOKEN is not set (the Supervisor sets it for the app)")
    service = fetch_mqtt_service(
        env.get("SUPERVISOR_API") or "http://supervisor",
        token,
        timeout=_number(env, "LIFEOPS_ADDON_TIMEOUT", 10.0),
        delay=_number(env, "LIFEOPS_ADDON_RETRY_DELAY", 2.0),
    )
    broker = broker_from(service)
    ca = ca_file(options.broker_ca_file, broker, Path(env.get("LIFEOPS_ADDON_SSL_DIR") or "/ssl"))
    data = env.get("LIFEOPS_ADDON_DATA") or "/data"
    metrics_port = env.get("LIFEOPS_ADDON_METRICS_PORT") or "9181"
    if not metrics_port.isdigit():
        raise Failure(f"LIFEOPS_ADDON_METRICS_PORT must be a port number, not {metrics_port!r}")
    program = env.get("LIFEOPS_ADDON_EXEC") or "lifeops-mesh"

    # The mesh gets neither the Supervisor's token nor this script's settings.
    out = {
        k: v
        for k, v in env.items()
        if not k.startswith("LIFEOPS_ADDON_") and k not in ("SUPERVISOR_TOKEN", "HASSIO_TOKEN")
    }
    out["LIFEOPS_TIMEZONE"] = zone
    out["LIFEOPS_HA_USERS"] = ",".join(options.users)
    for key in [k for k in out if k.startswith("LIFEOPS_OURA_")]:
        del out[key]  # only the options say who syncs with Oura
    if options.oura_tokens:
        out["LIFEOPS_OURA_USERS"] = ",".join(u for u, _ in options.oura_tokens)
        for user, token in options.oura_tokens:
            out["LIFEOPS_OURA_TOKEN_" + user.upper().replace("-", "_")] = token
    out.pop("LIFEOPS_HA_DISCOVERY_PREFIX", None)
    if options.discovery_prefix:
        out["LIFEOPS_HA_DISCOVERY_PREFIX"] = options.discovery_prefix
    out.pop("LIFEOPS_BROKER_CA_FILE", None)
    if ca:
        out["LIFEOPS_BROKER_CA_FILE"] = ca
    # /metrics and /healthz reachable from the Supervisor (watchdog) and mapped ports.
    out.setdefault("LIFEOPS_METRICS_BIND", "0.0.0.0")
    out.setdefault("PYTHONUNBUFFERED", "1")  # the app's log shows the mesh's lines as they come

    provider = f" of {broker.provider}" if broker.provider else ""
    note(
        f"broker {broker.shown} (the Supervisor's MQTT service{provider}); "
        f"users: {', '.join(options.users) or 'none yet'}; time zone {zone}; "
        f"discovery prefix {options.discovery_prefix or 'homeassistant'}; data in {data}"
    )
    argv = [program, "up", "--broker", broker.url, "--data", data, "--metrics-port", metrics_port]
    return argv, out


def main() -> int:
    # Stopped while still asking the Supervisor: a clean exit (exec resets the handler, so the
    # mesh gets SIGTERM as usual).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        argv, env = command(os.environ)
    except Failure as exc:
        return fail(exc)
    sys.stdout.flush()  # exec does not flush
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        return fail(Failure(f"cannot start {argv[0]}: {exc.strerror or exc}"))


def fail(exc: Failure) -> int:
    line = " ".join(str(exc).split())
    print(f"{NAME}: error: {line}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
