"""User ids: they become topic levels, so only UUIDs and plain slugs are accepted."""

from __future__ import annotations

import re
import uuid

from mesh import HandlerError

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
