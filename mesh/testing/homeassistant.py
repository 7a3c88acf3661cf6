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
    if hass.exists() and marker.exists():
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
    marker.write_text(HA_VERSION + "\n")
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
