"""Broker accounts: one random password per principal, generated per installation."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

from mesh.errors import ConfigError
from mesh.settings import new_password

CREDENTIALS = "credentials.toml"
PASSWD = "passwd"


def load_credentials(directory: Path) -> dict[str, str]:
    path = directory / CREDENTIALS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    users = data.get("users", {})
    if not isinstance(users, dict) or not all(isinstance(v, str) for v in users.values()):
        raise ConfigError(f"{path}: [users] must map names to password strings")
    return dict(users)


def ensure_accounts(
    directory: Path, principals: list[str], *, rotate: bool = False
) -> dict[str, str]:
    """Create, complete or (`rotate`) renew credentials.toml and the Mosquitto passwd file."""
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        raise ConfigError("mosquitto_passwd not found: install the Debian package 'mosquitto'")
    directory.mkdir(parents=True, exist_ok=True)
    creds = {} if rotate else load_credentials(directory)
    changed = rotate
    for name in principals:
        if name not in creds:
            creds[name] = new_password()
            changed = True
    passwd = directory / PASSWD
    if changed or not passwd.exists():
        cred_path = directory / CREDENTIALS
        body = "# Broker passwords of this installation (generated; keep private)\n[users]\n"
        body += "".join(f'{k} = "{v}"\n' for k, v in sorted(creds.items()))
        fd = os.open(cred_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        tmp = directory / (PASSWD + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o644)  # hashes only; Mosquitto runs as its own user and must read it
        for name, pw in sorted(creds.items()):
            subprocess.run(
                [passwd_tool, "-b", str(tmp), name, pw], check=True, capture_output=True, timeout=30
            )
        tmp.replace(passwd)
    return creds
