"""User ids: they become topic levels, Home Assistant entity ids and Oura token variable names.

A user id is a UUID or a slug of 1-64 characters of [A-Za-z0-9_-] (not `get`, `complete` or
`settings`, literal topic levels). Ids equal after folding case and `-`/`_` (`fold_user_id`:
`Run-Club`, `run_club` and `run-club` are all `run_club`) are one person's: they would share an
Oura token variable (LIFEOPS_OURA_TOKEN_RUN_CLUB) and Home Assistant entity ids
(`sensor.lifeops_run_club_level`). So the first of them an agent stores is that person's id,
and another spelling is refused (configuration: `distinct_user_ids`; the agents' stores:
lifeops_contract.user_registry).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from mesh import ConfigError, HandlerError

_SLUG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESERVED_USER_IDS = frozenset({"get", "complete", "settings"})  # literal topic levels


def check_user_id(user_id: str) -> str:
    """A UUID or a slug of [A-Za-z0-9_-], 1-64 characters; anything else is refused."""
    if user_id in RESERVED_USER_IDS:
        raise HandlerError("invalid_user_id", f"user_id {user_id!r} is reserved")
    if _SLUG.match(user_id):
        return user_id
    try:
        return str(uuid.UUID(user_id))
    except (ValueError, AttributeError):
        pass
    raise HandlerError(
        "invalid_user_id",
        f"user_id {user_id[:80]!r} must be a UUID or 1-64 characters of [A-Za-z0-9_-]",
    )


def fold_user_id(user_id: str) -> str:
    """The person a (checked) user id names: lower case, `-` as `_`. Two ids with the same fold
    are one person's; the fold is also the id's part of Oura token variable names (upper-cased)
    and of Home Assistant entity ids."""
    return user_id.lower().replace("-", "_")


def same_person_message(user_id: str, existing: str) -> str:
    """Why `user_id` is refused when `existing` is known (for errors and dead letters)."""
    return (
        f"user_id {user_id!r} is {existing!r} spelled differently: user ids equal after folding "
        f"case and '-'/'_' are one person's (they would share Oura token names and Home "
        f"Assistant entity ids); use {existing!r}"
    )


def distinct_user_ids(user_ids: Iterable[str], where: str) -> None:
    """Refuse (ConfigError naming `where` and both ids) a list of users in which two ids are
    one person's; the same id twice is one user, not a collision."""
    seen: dict[str, str] = {}
    for user_id in user_ids:
        first = seen.setdefault(fold_user_id(user_id), user_id)
        if first != user_id:
            raise ConfigError(
                f"{where}: {user_id!r} and {first!r} are one user id spelled two ways (ids "
                f"equal after folding case and '-'/'_' are one person's); keep one"
            )
