"""Real Home Assistant cores for the bridge's integration test, one per supported release.

- 2024.3.3, the newest release that installs on Python 3.11: its own virtualenv on this Python,
  cached under LIFEOPS_HA_VENV (default ~/.cache/lifeops-mesh/homeassistant-2024.3.3).
- 2026.11.0, which needs Python >= 3.14.2: a Debian forky root (`debootstrap --variant=minbase`,
  python3.14) with a virtualenv inside, cached under LIFEOPS_HA_ROOT (default
  ~/.cache/lifeops-mesh/homeassistant-2026.11.0-root). HA runs there under `chroot`, sharing the
  host's network (loopback), with its config directory inside the root. Building it needs root.

Each is built once (a ready marker records the recipe: change the recipe, and it is rebuilt), so a
warm machine starts HA in seconds. Installs follow HA's own pins (package_constraints.txt inside
the wheel) plus the requirements of the integrations HA sets up by default and MQTT's, read from
their manifests. Every step has a timeout; a build that fails raises one HomeAssistantUnavailable
naming the step and the tool's last output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError


class HomeAssistantUnavailable(ConfigError):
    """No Home Assistant to test against, and none could be installed."""


@dataclass(frozen=True)
class Release:
    """One Home Assistant release and how to install it."""

    version: str
    # Requirements of the integrations HA sets up by default (bootstrap.DEFAULT_INTEGRATIONS,
    # CORE_INTEGRATIONS, the base platforms and their manifest dependencies) plus MQTT's and
    # those of the YAML below (api, http, logger, automation); pinned as their manifests pin them.
    requirements: tuple[str, ...]
    # "host": a virtualenv on this Python; "forky": a virtualenv on python3.14 in a Debian root
    python: str
    # Which config files it reads: "2024" (MQTT entry 1.1 with everything in data, HTTP from
    # YAML) or "2026" (MQTT entry 2.1, HTTP from .storage/http)
    layout: str


RELEASES: dict[str, Release] = {
    "2024.3.3": Release(
        version="2024.3.3",
        requirements=(
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
            "josepy<2",  # 2.x breaks every HTTP request of 2024.3
        ),
        python="host",
        layout="2024",
    ),
    "2026.11.0": Release(
        version="2026.11.0",
        requirements=(
            "aiogithubapi==26.0.0",  # marketplace
            "cronsim==2.7",  # backup
            "gazetteer-matcher==1.1.0",  # conversation
            "ha-ffmpeg==3.2.2",  # ffmpeg
            "hassil==3.12.1",  # assist_satellite, conversation
            "home-assistant-frontend==20261028.4",  # frontend
            "home-assistant-intents==2026.10.27",  # conversation
            "ifaddr==0.2.0",  # network
            "infrared-protocols==10.5.0",  # infrared
            "mutagen==1.48.1",  # tts
            "paho-mqtt==2.1.0",  # mqtt
            "Pillow==13.0.0",  # image_upload
            "psutil-home-assistant==0.0.1",  # hardware
            "pymicro-vad==1.0.1",  # assist_pipeline
            "pyspeex-noise==1.0.2",  # assist_pipeline
            "PyTurboJPEG==1.8.3",  # camera
            "rf-protocols==4.3.0",  # radio_frequency
            "securetar==2026.10.0",  # backup
            "aiohasupervisor==0.8.1",  # imported by MQTT's config flow
            "SQLAlchemy==2.0.54",  # recorder, imported by analytics
            "fnv-hash-fast==2.0.3",  # recorder
            "isal==1.8.0",  # http's compression
            "numpy",  # pinned by HA's constraints
        ),
        python="forky",
        layout="2026",
    ),
}
VERSIONS = tuple(RELEASES)
HA_VERSION = VERSIONS[0]

# The Debian root for Pythons this machine does not have.
FORKY_PACKAGES = (
    "python3.14",
    "python3.14-venv",
    "python3.14-dev",
    "build-essential",
    "ca-certificates",
    "libffi-dev",
    "libssl-dev",
)
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
ROOT_CA = "/etc/lifeops-host-ca.crt"  # the host's CA bundle (a TLS proxy's CA may be in it)
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
INSTALL_HINT = (
    "Home Assistant {version} could not be installed into {where} ({step}): the bridge's "
    "integration test needs PyPI access once (about 300 MB{more}), or set {env} to a prepared "
    "one. Output:\n{output}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifeops-mesh"


def venv_dir() -> Path:
    """The host virtualenv of HA 2024.3.3."""
    configured = os.environ.get("LIFEOPS_HA_VENV")
    if configured:
        return Path(configured)
    return cache_dir() / f"homeassistant-{HA_VERSION}"


def root_dir(version: str) -> Path:
    """The Debian root of a release that runs on python3.14."""
    configured = os.environ.get("LIFEOPS_HA_ROOT")
    if configured:
        return Path(configured)
    return cache_dir() / f"homeassistant-{version}-root"


@dataclass(frozen=True)
class Installation:
    """An installed release: how to run its `hass`, and where its files must live."""

    release: Release
    venv: Path  # as `hass` sees it (inside the root when there is one)
    root: Path | None = None  # the chroot it runs in; None: on this machine

    def command(self, *args: str) -> list[str]:
        hass = str(self.venv / "bin" / "hass")
        if self.root is None:
            return [hass, *args]
        return [CHROOT, str(self.root), hass, *args]

    @property
    def env(self) -> dict[str, str] | None:
        return None if self.root is None else dict(CHROOT_ENV)

    def inside(self, path: Path) -> str:
        """A host path as `hass` sees it."""
        if self.root is None:
            return str(path)
        return "/" + str(path.resolve().relative_to(self.root.resolve()))

    def config_base(self) -> Path | None:
        """Where config directories must be (None: anywhere)."""
        return None if self.root is None else self.root / "srv" / "lifeops-ha"


class _StepFailed(Exception):
    def __init__(self, step: str, output: str) -> None:
        super().__init__(step)
        self.step = step
        self.output = output


def _run(step: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    try:
        subprocess.run(
            args,
            check=True,
            timeout=timeout,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise _StepFailed(f"{step}: no result within {timeout:.0f}s", _text(exc.output)) from exc
    except subprocess.CalledProcessError as exc:
        raise _StepFailed(f"{step}: exit {exc.returncode}", _text(exc.output)) from exc
    except OSError as exc:
        raise _StepFailed(step, str(exc)) from exc


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


@contextlib.contextmanager
def _build_lock(path: Path, timeout: float) -> Iterator[None]:
    """One build at a time per cache entry (a second pytest waits, bounded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _StepFailed(f"waiting for the lock {path}", "") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_installed(version: str = HA_VERSION, timeout: float = 1800.0) -> Installation:
    """The installed release, building and caching it first when needed."""
    try:
        release = RELEASES[version]
    except KeyError:
        raise HomeAssistantUnavailable(
            f"no recipe for Home Assistant {version}; known: {', '.join(VERSIONS)}"
        ) from None
    if release.python == "host":
        where, env, more = venv_dir(), "LIFEOPS_HA_VENV", ""
    else:
        where, env, more = root_dir(version), "LIFEOPS_HA_ROOT", ", and a Debian mirror for 250 MB"
    try:
        with _build_lock(where.with_name(where.name + ".lock"), timeout):
            if release.python == "host":
                return _host_venv(release, where, timeout)
            return _forky_venv(release, where, timeout)
    except _StepFailed as exc:
        raise HomeAssistantUnavailable(
            INSTALL_HINT.format(
                version=version,
                where=where,
                step=exc.step,
                more=more,
                env=env,
                output=exc.output[-3000:],
            )
        ) from None


def _recipe(release: Release, *extra: str) -> str:
    return "\n".join((release.version, *release.requirements, *extra)) + "\n"


def _constraints(wheel: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        into.write_bytes(archive.read("homeassistant/package_constraints.txt"))


# -- 2024.3.3: a virtualenv on this Python -----------------------------------------------------


def _host_venv(release: Release, venv: Path, timeout: float) -> Installation:
    installation = Installation(release, venv)
    marker = venv / ".lifeops-ready"
    recipe = _recipe(release)
    if (venv / "bin" / "hass").exists() and marker.exists() and marker.read_text() == recipe:
        return installation
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        _run("python -m venv", [sys.executable, "-m", "venv", str(venv)], 300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        wheel_spec = f"homeassistant=={release.version}"
        _run("pip download", [*pip, "download", "--no-deps", "-d", tmp, wheel_spec], 600)
        wheel = next(Path(tmp).glob("homeassistant-*.whl"))
        constraints = Path(tmp) / "constraints.txt"
        _constraints(wheel, constraints)
        _run(
            "pip install",
            [*pip, "install", "-c", str(constraints), str(wheel), *release.requirements],
            timeout,
        )
    marker.write_text(recipe)
    return installation


# -- 2026.11.0: python3.14 in a Debian forky root ----------------------------------------------


def debian_mirror(apt: Path = Path("/etc/apt")) -> str:
    """The machine's Debian mirror (LIFEOPS_DEBIAN_MIRROR, else APT's sources, else Debian's)."""
    configured = os.environ.get("LIFEOPS_DEBIAN_MIRROR")
    if configured:
        return configured
    sources = sorted((apt / "sources.list.d").glob("*.sources"))
    for path in sources:
        for paragraph in _read(path).split("\n\n"):
            fields = {}
            for line in paragraph.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if fields.get("types", "deb").split()[0] != "deb":
                continue
            for uri in fields.get("uris", "").split():
                if _is_debian_main(uri, fields.get("suites", "")):
                    return uri
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        for line in _read(path).splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and _is_debian_main(words[1], words[2]):
                return words[1]
    return "http://deb.debian.org/debian"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _is_debian_main(uri: str, suites: str) -> bool:
    return uri.rstrip("/").endswith("/debian") and "security" not in suites


def _forky_root(root: Path, timeout: float) -> None:
    mirror = debian_mirror()
    recipe = "\n".join(("debootstrap --variant=minbase forky", mirror, *FORKY_PACKAGES)) + "\n"
    marker = root / ".lifeops-root-ready"
    if marker.exists() and marker.read_text() == recipe:
        return
    if os.geteuid() != 0:
        raise _StepFailed("debootstrap and chroot need root", f"running as uid {os.geteuid()}")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise _StepFailed("debootstrap not found", "install it: apt-get install debootstrap")
    scripts = Path("/usr/share/debootstrap/scripts")
    # bookworm's debootstrap has no forky script; sid's bootstraps it (the keyring verifies it)
    script = scripts / "forky" if (scripts / "forky").exists() else scripts / "sid"
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    args = [debootstrap, "--variant=minbase", f"--include={','.join(FORKY_PACKAGES)}"]
    try:
        _run(
            f"debootstrap forky from {mirror}",
            [*args, "forky", str(partial), mirror, str(script)],
            timeout,
        )
    except _StepFailed:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / marker.name).write_text(recipe)
    shutil.rmtree(root, ignore_errors=True)  # a root of an older recipe
    partial.rename(root)


def _forky_venv(release: Release, root: Path, timeout: float) -> Installation:
    venv = Path(f"/opt/homeassistant-{release.version}")
    installation = Installation(release, venv, root)
    host_venv = root / venv.relative_to("/")
    marker = host_venv / ".lifeops-ready"
    recipe = _recipe(release, *FORKY_PACKAGES)
    if (host_venv / "bin" / "hass").exists() and marker.exists() and marker.read_text() == recipe:
        return installation
    _forky_root(root, timeout)
    # name resolution and the host's CA bundle, for pip inside the root
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    host_ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    host_ca = host_ca or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copyfile(host_ca, root / ROOT_CA.lstrip("/"))
    env = {**CHROOT_ENV, "PIP_CERT": ROOT_CA, "PIP_DEFAULT_TIMEOUT": "60"}
    chroot = [CHROOT, str(root)]
    shutil.rmtree(host_venv, ignore_errors=True)
    _run("python3.14 -m venv", [*chroot, "python3.14", "-m", "venv", str(venv)], 300, env)
    pip = [*chroot, str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory(dir=root / "tmp") as tmp:
        inner = installation.inside(Path(tmp))
        wheel_spec = f"homeassistant=={release.version}"
        _run("pip download", [*pip, "download", "--no-deps", "-d", inner, wheel_spec], 600, env)
        wheel = next(Path(tmp).glob("homeassistant-*.whl"))
        _constraints(wheel, Path(tmp) / "constraints.txt")
        _run(
            "pip install",
            [
                *pip,
                "install",
                "-c",
                f"{inner}/constraints.txt",
                f"{inner}/{wheel.name}",
                *release.requirements,
            ],
            timeout,
            env,
        )
    marker.write_text(recipe)
    return installation


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
{http}api:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
    homeassistant.components.automation: debug
automation: !include automations.yaml
"""
# HA before 2026 reads its HTTP settings from YAML; later releases from .storage/http (YAML there
# becomes a trial that reverts after 5 minutes).
HTTP_YAML = """\
http:
  server_host: 127.0.0.1
  server_port: {http_port}
"""


def mqtt_config_entry(layout: str, port: int, username: str, password: str) -> dict[str, object]:
    """The MQTT config entry as HA's UI would write it: 2024.3 (entry version 1.1) keeps
    everything in `data`; 2026.11 (entry version 2.1) has the broker in `data` and discovery,
    birth and will in `options`."""
    entry: dict[str, object] = {
        "entry_id": "lifeopsmqttentry0000000000000001",
        "domain": "mqtt",
        "title": "LifeOps Mosquitto",
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    broker = {"broker": "127.0.0.1", "port": port, "username": username, "password": password}
    if layout == "2024":
        return {
            **entry,
            "version": 1,
            "minor_version": 1,
            "data": {**broker, "discovery": True},
            "options": {},
        }
    status = "homeassistant/status"
    return {
        **entry,
        "version": 2,
        "minor_version": 1,
        "data": {**broker, "protocol": "5"},
        "options": {
            "discovery": True,
            "discovery_prefix": "homeassistant",
            "birth_message": {"topic": status, "payload": "online", "qos": 0, "retain": False},
            "will_message": {"topic": status, "payload": "offline", "qos": 0, "retain": False},
        },
    }


def http_storage(http_port: int) -> dict[str, object]:
    """.storage/http of HA 2026: the stable config, no pending trial, YAML migration done."""
    stable = {
        "server_host": ["127.0.0.1"],
        "server_port": http_port,
        "cors_allowed_origins": ["https://cast.home-assistant.io"],
        "login_attempts_threshold": -1,
        "ip_ban_enabled": True,
        "ssl_profile": "intermediate_v6",
        "use_x_frame_options": True,
        "created_at": "2026-01-01T00:00:00+00:00",
        "error": None,
        "error_message": None,
    }
    data = {"stable": stable, "pending": None, "yaml_migration_done": True}
    return {"version": 3, "minor_version": 1, "key": "http", "data": data}


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
        version: str = HA_VERSION,
    ) -> None:
        from mesh.broker.process import free_port

        self.installation = ensure_installed(version)
        self.layout = self.installation.release.layout
        self.link: Path | None = None
        base = self.installation.config_base()
        if base is not None:
            # inside the root, where `hass` can see it; `config_dir` points there
            base.mkdir(parents=True, exist_ok=True)
            real = Path(tempfile.mkdtemp(prefix=f"{config_dir.parent.name}-", dir=base))
            config_dir.parent.mkdir(parents=True, exist_ok=True)
            config_dir.symlink_to(real)
            self.link, config_dir = config_dir, real
        self.config_dir = config_dir
        self.mqtt = (mqtt_port, mqtt_username, mqtt_password)
        self.automations = automations
        self.http_port = http_port or free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.earlier_logs = ""

    def cleanup(self) -> None:
        """Stop HA and remove a config directory made inside the root (its log is kept beside
        the link, for a look after a failure)."""
        self.stop()
        if self.link is not None:
            self.link.unlink(missing_ok=True)
            self.link.with_name("home-assistant.log").write_text(self.log_text())
            shutil.rmtree(self.config_dir, ignore_errors=True)
            self.link = None

    def hass(self, *args: str) -> list[str]:
        return self.installation.command(*args)

    @property
    def log_file(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def log_text(self) -> str:
        """HA's log of every start so far (HA starts each run with a new file)."""
        return self.earlier_logs + self._current_log()

    def _current_log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def prepare(self) -> None:
        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION.format(
                http=HTTP_YAML.format(http_port=self.http_port) if self.layout == "2024" else ""
            )
        )
        if self.layout != "2024":
            (storage / "http").write_text(json.dumps(http_storage(self.http_port)))
        (self.config_dir / "automations.yaml").write_text(self.automations)
        entries = storage / "core.config_entries"
        if not entries.exists():
            port, username, password = self.mqtt
            entry = mqtt_config_entry(self.layout, port, username, password)
            body = {"version": 1, "minor_version": 1, "key": "core.config_entries"}
            entries.write_text(json.dumps({**body, "data": {"entries": [entry]}}))
            onboarding = {"version": 4, "minor_version": 1, "key": "onboarding"}
            done = ["user", "core_config", "analytics", "integration"]
            (storage / "onboarding").write_text(json.dumps({**onboarding, "data": {"done": done}}))
            inside = self.installation.inside(self.config_dir)
            subprocess.run(
                self.hass("--script", "auth", "-c", inside, "add", self.user, self.password),
                check=True,
                capture_output=True,
                timeout=120,
                env=self.installation.env,
            )

    def start(self, timeout: float = 120.0) -> None:
        self.prepare()
        self.earlier_logs += self._current_log()
        self.log_file.unlink(missing_ok=True)
        inside = self.installation.inside
        self.proc = subprocess.Popen(
            self.hass("-c", inside(self.config_dir), "--skip-pip",
                      "--log-file", inside(self.log_file)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.installation.env,
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

    def version(self) -> str:
        """The release HA says it is (REST API /api/config)."""
        config = self._http("GET", "/api/config")
        assert isinstance(config, dict)
        return str(config["version"])

    def states(self) -> dict[str, dict[str, object]]:
        states = self._http("GET", "/api/states")
        assert isinstance(states, list)
        return {s["entity_id"]: s for s in states}

    def call_service(self, domain: str, service: str, data: dict[str, object]) -> object:
        return self._http("POST", f"/api/services/{domain}/{service}", data)

    def storage(self, key: str) -> dict[str, object]:
        """A file of HA's .storage (registries are written there, at the latest on stop)."""

        data = json.loads((self.config_dir / ".storage" / key).read_text())
        assert isinstance(data, dict)
        return data
