"""Health of one agent: broker connection, database, and the agents it depends on."""

from __future__ import annotations

from typing import Literal

import msgspec


class Check(msgspec.Struct, kw_only=True):
    ok: bool
    detail: str


class HealthReport(msgspec.Struct, kw_only=True):
    agent: str
    status: Literal["healthy", "degraded"]
    checks: dict[str, Check]
    outbox_pending: int = 0
    outbox_oldest_age_seconds: float = 0.0
    receipts_pending: int = 0
    receipts_oldest_age_seconds: float = 0.0

    @classmethod
    def of(cls, agent: str, checks: dict[str, Check], **figures: float) -> HealthReport:
        status: Literal["healthy", "degraded"] = (
            "healthy" if all(c.ok for c in checks.values()) else "degraded"
        )
        return cls(agent=agent, status=status, checks=checks, **figures)  # type: ignore[arg-type]
