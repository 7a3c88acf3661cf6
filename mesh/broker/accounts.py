"""Broker accounts: one random password per principal, generated per installation.

The Mosquitto password file is written here, not by `mosquitto_passwd -b` (which puts every
password on a command line, visible in `ps`): Mosquitto 2.0's `$7$` format is PBKDF2-HMAC-SHA512
over a 12-byte salt, 64-byte hash, base64 (mosquitto's src/password_mosq.c); writing it takes
hashlib, nothing else. 101 iterations is mosquitto_passwd's own default; the passwords are 24
random URL-safe characters (144 bits), so the iteration count is not what protects them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tomllib
from pathlib import Path

from mesh.errors import ConfigError
from mesh.settings import new_password

CREDENTIALS = "credentials.toml"
PASSWD = "passwd"
ITERATIONS = 101


def password_line(user: str, password: str, *, iterations: int = ITERATIONS) -> str:
    """One line of a Mosquitto 2.0 password file for `user`."""
    if ":" in user or "\n" in user:
        raise ConfigError(f"broker account {user!r}: ':' and newlines are not allowed")
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, dklen=64)
    b64 = base64.b64encode
    return f"{user}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}\n"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


def _own_privately(directory: Path, owner: tuple[int, int]) -> None:
    """`directory` (0700) and the files in it (0600) belong to `owner` (uid, gid) alone."""
    os.chown(directory, *owner)
    directory.chmod(0o700)
    for f in directory.iterdir():
        if f.is_file():
            os.chown(f, *owner)
            f.chmod(0o600)


def install_private(src: Path, dest: Path, owner: tuple[int, int] | None) -> None:
    """Copy `src` to `dest` readable by `owner` only (0600): Mosquitto 2.0.19+ refuses a
    world-readable ACL or password file, or one owned by another user."""
    try:
        text = src.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{src}: {exc}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_private(dest, text)
    if owner is not None:
        os.chown(dest, *owner)


def credentials_text(creds: dict[str, str]) -> str:
    body = "# Broker passwords of this installation (generated; keep private)\n[users]\n"
    return body + "".join(f'{k} = "{v}"\n' for k, v in sorted(creds.items()))


def load_credentials(directory: Path) -> dict[str, str]:
    return load_credentials_file(directory / CREDENTIALS)


def load_credentials_file(path: Path) -> dict[str, str]:
    """The [users] of a credentials.toml ({} when the file does not exist)."""
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


def ensure_credentials_file(path: Path, names: list[str]) -> dict[str, str]:
    """The passwords in the credentials.toml at `path`, with one created for each of `names`
    that has none yet (the file then rewritten, readable by its owner only)."""
    creds = load_credentials_file(path)
    missing = [n for n in names if n not in creds]
    for name in missing:
        creds[name] = new_password()
    if missing or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, credentials_text(creds))
    return creds


def ensure_accounts(
    directory: Path,
    principals: list[str],
    *,
    rotate: bool = False,
    accounts_dir: Path | None = None,
    passwd_owner: tuple[int, int] | None = None,
    accounts_owner: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Create, complete or (`rotate`) renew credentials.toml and the Mosquitto passwd file in
    `directory`. With `accounts_dir`, also one `<principal>/credentials.toml` per account with
    that account's password only, and `mosquitto/passwd` (hashes only) for the broker: what
    each service of a deployment mounts (`passwd_owner`: uid, gid of the broker's user;
    `accounts_owner`: of the services' user, owner of every other account's directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    creds = {} if rotate else load_credentials(directory)
    changed = rotate
    for name in principals:
        if name not in creds:
            creds[name] = new_password()
            changed = True
    passwd = directory / PASSWD
    if changed or not passwd.exists():
        _write_private(directory / CREDENTIALS, credentials_text(creds))
        _write_private(passwd, "".join(password_line(u, p) for u, p in sorted(creds.items())))
    if accounts_dir is not None:
        for name, password in sorted(creds.items()):
            own = accounts_dir / name
            own.mkdir(parents=True, exist_ok=True)
            _write_private(own / CREDENTIALS, credentials_text({name: password}))
            if accounts_owner is not None:
                _own_privately(own, accounts_owner)
        broker = accounts_dir / "mosquitto"
        broker.mkdir(parents=True, exist_ok=True)
        _write_private(broker / PASSWD, passwd.read_text(encoding="utf-8"))
        if passwd_owner is not None:
            os.chown(broker / PASSWD, *passwd_owner)
    return creds
