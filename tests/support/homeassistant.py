"""A real Home Assistant core for the bridge's integration test.

Home Assistant 2024.3.3 is the newest release that installs on Python 3.11. It lives in its own
virtualenv (its pins clash with ours), built once and cached under LIFEOPS_HA_VENV (default
~/.cache/lifeops-mesh/homeassistant-2024.3.3): a warm machine starts HA in seconds.
The install follows HA's own pins (package_constraints.txt inside the wheel), plus josepy<2 (2.x
breaks every HTTP request of 2024.3) and the requirements of the integrations HA sets up by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mesh.errors import ConfigError

HA_VERSION = "2024.3.3"
# Requirements of the integrations HA 2024.3 sets up by default (bootstrap.DEFAULT_INTEGRATIONS and
# their dependencies, read from their manifests) plus MQTT's.
INTEGRATION_REQUIREMENTS = (
    "Pillow==10.2.0",
    "aiohttp-fast-url-dispatcher==0.3.0",
    "aiohttp-zlib-ng==0.3.1",
    "aiohttp_cors==0.7.0",
    "home-assistant-frontend==20240307.0",
    "ifaddr==0.2.0",
    "janus==1.0.0",
    "paho-mqtt==1.6.1",
    "psutil-home-assistant==0.0.1",
    "securetar==2024.2.1",
    # imported by analytics and the camera/stream chain even when unused
    "SQLAlchemy==2.0.27",
    "fnv-hash-fast==0.5.0",
    "numpy",  # pinned by HA's constraints
)
EXTRA_PINS = ("josepy<2",)
INSTALL_HINT = (
    "Home Assistant {version} could not be installed into {venv}: the bridge's integration test "
    "needs PyPI access once (about 300 MB), or set LIFEOPS_HA_VENV to a virtualenv that has "
    "homeassistant=={version} installed. pip said:\n{output}"
)


class HomeAssistantUnavailable(ConfigError):
    """No Home Assistant to test against, and none could be installed."""


def venv_dir() -> Path:
    configured = os.environ.get("LIFEOPS_HA_VENV")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lifeops-mesh" / f"homeassistant-{HA_VERSION}"


def ensure_installed(timeout: float = 1800.0) -> Path:
    """Return the `hass` executable, building the cached virtualenv first when needed."""
    venv = venv_dir()
    hass = venv / "bin" / "hass"
    marker = venv / ".lifeops-ready"
    recipe = "\n".join((HA_VERSION, *INTEGRATION_REQUIREMENTS, *EXTRA_PINS)) + "\n"
    if hass.exists() and marker.exists() and marker.read_text() == recipe:
        return hass
    try:
        _install(venv, timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "output", None) or str(exc)
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        raise HomeAssistantUnavailable(
            INSTALL_HINT.format(version=HA_VERSION, venv=venv, output=output[-3000:])
        ) from exc
    marker.write_text(recipe)
    return hass


def _run(args: list[str], timeout: float) -> None:
    subprocess.run(
        args, check=True, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _install(venv: Path, timeout: float) -> None:
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(venv)], 300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        _run([*pip, "download", "--no-deps", "-d", tmp, f"homeassistant=={HA_VERSION}"], 600)
        wheel = next(Path(tmp).glob("homeassistant-*.whl"))
        constraints = Path(tmp) / "constraints.txt"
        with zipfile.ZipFile(wheel) as archive:
            constraints.write_bytes(archive.read("homeassistant/package_constraints.txt"))
        _run(
            [
                *pip,
                "install",
                "-c",
                str(constraints),
                str(wheel),
                *INTEGRATION_REQUIREMENTS,
                *EXTRA_PINS,
            ],
            timeout,
        )


# -- a running Home Assistant ------------------------------------------------------------------

CONFIGURATION = """\
homeassistant:
  name: LifeOps test
  time_zone: UTC
  unit_system: metric
  currency: EUR
  country: DE
  latitude: 0
  longitude: 0
  elevation: 0
http:
  server_host: 127.0.0.1
  server_port: {http_port}
api:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
automation: !include automations.yaml
"""


class HomeAssistantProcess:
    """`hass -c DIR --skip-pip` with MQTT set up by a config entry (as the UI would), one user,
    and a REST API token from HA's own login flow. Blocking calls: use from a thread."""

    user = "lifeops-test"
    password = "lifeops-test-password"

    def __init__(
        self,
        config_dir: Path,
        *,
        mqtt_port: int,
        mqtt_username: str,
        mqtt_password: str,
        automations: str = "[]\n",
        http_port: int | None = None,
    ) -> None:
        from mesh.broker.process import free_port

        self.config_dir = config_dir
        self.mqtt = (mqtt_port, mqtt_username, mqtt_password)
        self.automations = automations
        self.http_port = http_port or free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.hass = ensure_installed()

    @property
    def log_file(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def prepare(self) -> None:
        import json

        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION.format(http_port=self.http_port)
        )
        (self.config_dir / "automations.yaml").write_text(self.automations)
        entries = storage / "core.config_entries"
        if not entries.exists():
            port, username, password = self.mqtt
            entry = {
                "entry_id": "lifeopsmqttentry0000000000000001",
                "version": 1,
                "minor_version": 1,
                "domain": "mqtt",
                "title": "LifeOps Mosquitto",
                "data": {
                    "broker": "127.0.0.1",
                    "port": port,
                    "username": username,
                    "password": password,
                    "discovery": True,
                },
                "options": {},
                "pref_disable_new_entities": False,
                "pref_disable_polling": False,
                "source": "user",
                "unique_id": None,
                "disabled_by": None,
            }
            body = {"version": 1, "minor_version": 1, "key": "core.config_entries"}
            entries.write_text(json.dumps({**body, "data": {"entries": [entry]}}))
            onboarding = {"version": 4, "minor_version": 1, "key": "onboarding"}
            done = ["user", "core_config", "analytics", "integration"]
            (storage / "onboarding").write_text(json.dumps({**onboarding, "data": {"done": done}}))
            subprocess.run(
                [str(self.hass), "--script", "auth", "-c", str(self.config_dir), "add",
                 self.user, self.password],
                check=True,
                capture_output=True,
                timeout=120,
            )  # fmt: skip

    def start(self, timeout: float = 120.0) -> None:
        import time

        self.prepare()
        self.log_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [str(self.hass), "-c", str(self.config_dir), "--skip-pip",
             "--log-file", str(self.log_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HomeAssistantUnavailable(
                    f"Home Assistant exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
                )
            try:
                self.token = self._login()
                return
            except OSError:
                time.sleep(0.5)
        raise HomeAssistantUnavailable(
            f"Home Assistant did not answer within {timeout}s:\n{self.log_text()[-4000:]}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # -- HTTP -----------------------------------------------------------------------------------

    def _http(self, method: str, path: str, body: object = None, *, form: bool = False) -> object:
        import json
        import urllib.parse
        import urllib.request

        headers = {}
        data = None
        if body is not None and form:
            data = urllib.parse.urlencode(body).encode()  # type: ignore[arg-type]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and not path.startswith("/auth/"):
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=15) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def _login(self) -> str:
        """HA's own login flow: user and password -> authorization code -> access token."""
        client_id = self.base + "/"
        flow = self._http(
            "POST",
            "/auth/login_flow",
            {"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id},
        )
        assert isinstance(flow, dict)
        result = self._http(
            "POST",
            f"/auth/login_flow/{flow['flow_id']}",
            {"client_id": client_id, "username": self.user, "password": self.password},
        )
        assert isinstance(result, dict) and result.get("type") == "create_entry", result
        token = self._http(
            "POST",
            "/auth/token",
            {"grant_type": "authorization_code", "code": result["result"], "client_id": client_id},
            form=True,
        )
        assert isinstance(token, dict)
        return str(token["access_token"])

    def states(self) -> dict[str, dict[str, object]]:
        states = self._http("GET", "/api/states")
        assert isinstance(states, list)
        return {s["entity_id"]: s for s in states}

    def call_service(self, domain: str, service: str, data: dict[str, object]) -> object:
        return self._http("POST", f"/api/services/{domain}/{service}", data)

    def storage(self, key: str) -> dict[str, object]:
        """A file of HA's .storage (registries are written there, at the latest on stop)."""
        import json

        data = json.loads((self.config_dir / ".storage" / key).read_text())
        assert isinstance(data, dict)
        return data
