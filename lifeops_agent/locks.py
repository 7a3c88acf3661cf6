"""LifeOps' database lock keys: one per user, for agents sharing one database."""

from __future__ import annotations

from typing import Any

from lifeops_contract.ids import check_user_id
from mesh import HandlerError


def user_lock(user_id: str) -> str:
    """The lock key of what LifeOps keeps of a user (see `user_locks`)."""
    return f"lifeops:user:{user_id}"


def user_locks(payload: Any) -> list[str]:
    """The lock key of a message that changes a user: completions read the user's history to
    write a streak and a best streak, the retained timeline is built from what is stored, an
    Oura day is stored as its next revision of what is there. So agents sharing the database
    take turns per user (mesh Route.locks), and the receipt and refresh paths lock alike."""
    try:
        return [user_lock(check_user_id(payload.user_id))]
    except HandlerError:
        return []  # refused by its handler
