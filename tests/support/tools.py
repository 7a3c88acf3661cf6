"""Finding the Debian tools the deployment tests run (mosquitto, mosquitto_passwd, ...)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def mosquitto_tool(name: str) -> str:
    """The path of `name` (on PATH or in /usr/sbin); a test failure naming the package if not."""
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(
            f"{name} not found: install the Debian packages mosquitto and mosquitto-clients"
        )
    return found
