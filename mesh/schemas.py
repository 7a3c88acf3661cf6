"""The runtime's own payloads: replies and errors, dead letters, health, availability.

Every application payload derives from `Payload`; a contract (topics.toml) names its schemas in
a registry that the application passes to `Contract.load`, merged with `RUNTIME_SCHEMAS` here.

Wire messages do not reject unknown fields (a newer peer may add some); new fields always get
defaults and a field's type never changes. Every reply carries `success` and an optional `error`,
so the runtime's generic error reply decodes as any reply schema.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

Availability = Literal["online", "offline"]
# A request's `transaction`, echoed in its reply (for MQTT 3.1.1 clients without correlation
# data): a short string or a 64-bit number.
Transaction = (
    Annotated[str, msgspec.Meta(max_length=256)]
    | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
)


class Payload(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Base of every JSON payload."""


class ErrorInfo(Payload, kw_only=True):
    """What went wrong: a code, a message, and whether trying again later may succeed."""

    code: str
    message: str
    # True when trying again later may succeed (the responder's database was away, or a bug):
    # only a refusal (validation, unknown type, not found) is a final answer.
    transient: bool = False


class Reply(Payload, kw_only=True):
    """Base of every reply: `success`, an `error` when it is false, the request's `transaction`."""

    success: bool = True
    error: ErrorInfo | None = None
    transaction: Transaction | None = None


class ErrorReply(Reply, kw_only=True):
    """A reply that carries only an error (`success` false)."""

    success: bool = False


class DeadLetter(Payload, kw_only=True):
    """A refused message, as published on mesh/dlq/<agent>: `payload` is an excerpt (the first
    few KiB); its length and SHA-256 identify the whole, which the agent's database keeps."""

    agent: str
    topic: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_length: int = 0
    payload_sha256: str = ""
    payload_truncated: bool = False
    error: ErrorInfo
    received_at: dt.datetime
    response_topic: str | None = None
    correlation_data: str | None = None  # hex
    trace_id: str | None = None
    # How many refused messages this record stands for: 1, or more for the summary of a flood
    # (the dead letters of one topic beyond the burst of an interval, see mesh.dlq).
    count: int = 1


class Check(Payload, kw_only=True):
    """One named check of a health report: ok or not, and why."""

    ok: bool
    detail: str


class HealthReport(Payload, kw_only=True):
    """An agent's health, as GET /healthz and the retained `<agent>/health` give it."""

    agent: str
    instance: str = ""
    status: Literal["healthy", "degraded"]
    checks: dict[str, Check]
    outbox_pending: int = 0
    outbox_oldest_age_seconds: float = 0.0
    receipts_pending: int = 0
    receipts_oldest_age_seconds: float = 0.0
    # Mosquitto's $SYS dropped-messages counter as this agent last saw it (None: not seen yet).
    # The broker sends a $SYS value only when it changes, so a tool that listens for a moment
    # rarely sees it; an agent listens all the time.
    broker_dropped: int | None = None
    checked_at: dt.datetime | None = None

    @classmethod
    def of(
        cls, agent: str, checks: dict[str, Check], *, instance: str = "", **figures: Any
    ) -> HealthReport:
        ok = all(c.ok for c in checks.values())
        return cls(
            agent=agent,
            instance=instance,
            status="healthy" if ok else "degraded",
            checks=checks,
            checked_at=dt.datetime.now(dt.UTC),
            **figures,
        )


class SyncMarker(Payload, kw_only=True):
    """What a reader of retained messages sends itself (see mesh.readback)."""

    nonce: str


RUNTIME_SCHEMAS: dict[str, Any] = {
    "Availability": Availability,
    "Reply": Reply,
    "ErrorReply": ErrorReply,
    "DeadLetter": DeadLetter,
    "HealthReport": HealthReport,
    "SyncMarker": SyncMarker,
}
"""The schemas every contract may name without declaring them (its own come on top)."""
