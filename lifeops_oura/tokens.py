"""Oura personal access tokens: secrets read from a file or the environment, never shown.

Per user, the first that is set wins:

- `LIFEOPS_OURA_TOKEN_FILE_<USER>`: a file holding the token (e.g. a Docker or systemd secret);
- `LIFEOPS_OURA_TOKEN_<USER>`: the token itself;
- `LIFEOPS_OURA_TOKEN_DIR`: a directory with one file per user, named by the user id (for a
  mounted secrets directory, as compose.yaml does);

where `<USER>` is the user id upper-cased with `-` as `_` (alice -> ALICE, run-club -> RUN_CLUB):
its fold (lifeops_contract.ids.fold_user_id), so ids one variable would serve are one person's,
and a configuration naming two of them is refused (OuraSyncConfig).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lifeops_contract.ids import fold_user_id
from mesh import ConfigError


class Token:
    """A secret: its repr and str never show it; `reveal()` is for the Authorization header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ConfigError("an Oura token is one word without spaces")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Token('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_suffix(user_id: str) -> str:
    return fold_user_id(user_id).upper()


def read_token_file(path: Path, what: str) -> Token:
    """The token in a file; `what` (the variable or option that named it) is in the errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    try:
        return Token(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {path}: {exc}") from exc


def token_sources(user_id: str) -> str:
    """Where a user's token may come from, for the error that says none was found."""
    suffix = env_suffix(user_id)
    return (
        f"LIFEOPS_OURA_TOKEN_FILE_{suffix}, LIFEOPS_OURA_TOKEN_{suffix} or a file "
        f"{user_id} in LIFEOPS_OURA_TOKEN_DIR"
    )


def token_for(user_id: str, env: Mapping[str, str]) -> Token | None:
    """The user's token from LIFEOPS_OURA_TOKEN_FILE_<USER> or LIFEOPS_OURA_TOKEN_<USER>."""
    suffix = env_suffix(user_id)
    path = env.get(f"LIFEOPS_OURA_TOKEN_FILE_{suffix}")
    if path:
        return read_token_file(Path(path), f"LIFEOPS_OURA_TOKEN_FILE_{suffix}")
    value = env.get(f"LIFEOPS_OURA_TOKEN_{suffix}")
    if value:
        try:
            return Token(value)
        except ConfigError as exc:
            raise ConfigError(f"LIFEOPS_OURA_TOKEN_{suffix}: {exc}") from exc
    directory = env.get("LIFEOPS_OURA_TOKEN_DIR")
    if directory and (Path(directory) / user_id).is_file():
        return read_token_file(Path(directory) / user_id, "LIFEOPS_OURA_TOKEN_DIR")
    return None
