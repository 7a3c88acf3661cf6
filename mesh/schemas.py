"""The runtime's own payloads: replies and errors, dead letters, health, availability.

Every application payload derives from `Payload`; a contract (topics.toml) names its schemas in
a registry that the application passes to `Contract.load`, merged with `RUNTIME_SCHEMAS` here.

Wire messages do not reject unknown fields (a newer peer may add some); new fields always get
defaults and a field's type never changes. Every reply carries `success` and an optional `error`,
so the runtime's generic error reply decodes as any reply schema.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

Availability = Literal["online", "offline"]


class Payload(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Base of every JSON payload."""


class ErrorInfo(Payload, kw_only=True):
    code: str
    message: str


class Reply(Payload, kw_only=True):
    """Base of every reply: `success`, an `error` when it is false, the request's `transaction`."""

    success: bool = True
    error: ErrorInfo | None = None
    transaction: str | int | None = None


class ErrorReply(Reply, kw_only=True):
    success: bool = False


class DeadLetter(Payload, kw_only=True):
    agent: str
    topic: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    error: ErrorInfo
    received_at: dt.datetime
    response_topic: str | None = None
    correlation_data: str | None = None  # hex
    trace_id: str | None = None


class Check(Payload, kw_only=True):
    ok: bool
    detail: str


class HealthReport(Payload, kw_only=True):
    agent: str
    status: Literal["healthy", "degraded"]
    checks: dict[str, Check]
    outbox_pending: int = 0
    outbox_oldest_age_seconds: float = 0.0
    receipts_pending: int = 0
    receipts_oldest_age_seconds: float = 0.0
    checked_at: dt.datetime | None = None

    @classmethod
    def of(cls, agent: str, checks: dict[str, Check], **figures: Any) -> HealthReport:
        ok = all(c.ok for c in checks.values())
        return cls(
            agent=agent,
            status="healthy" if ok else "degraded",
            checks=checks,
            checked_at=dt.datetime.now(dt.UTC),
            **figures,
        )


RUNTIME_SCHEMAS: dict[str, Any] = {
    "Availability": Availability,
    "Reply": Reply,
    "ErrorReply": ErrorReply,
    "DeadLetter": DeadLetter,
    "HealthReport": HealthReport,
}
"""The schemas every contract may name without declaring them (its own come on top)."""
