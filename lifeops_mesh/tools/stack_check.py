"""`lifeops-mesh integration-test`: black-box checks against a running mesh, as compose's
`test-runner` runs them (`docker compose --profile test run --rm test-runner`).

1. Contract round trips: every request of the contract, sent as its documented example (for a
   user of this run), is answered with a reply of its reply schema and `success`.
2. A completion reaching Stats: a timeline item completed through LifeOps shows up as XP on the
   user's character sheet in Stats.
3. Doctor's live review: the read-only `doctor` account watches the broker while 1 and 2 run; a
   critical finding (undeclared traffic, a payload failing its schema, an unanswered request, an
   agent offline, ...) fails the run.

Only the broker is touched (MQTT accounts `tester` and `doctor`): what runs behind it is a black
box.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import msgspec

from lifeops_contract import contract as load_contract
from lifeops_contract.schemas import (
    CharacterGetRequest,
    TimelineCompleteRequest,
    TimelineGetRequest,
)
from lifeops_mesh.tools.doctor.live import live_checks
from lifeops_mesh.tools.doctor.report import Report
from mesh import Contract, MeshClient, MeshError, codec


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str


class StackReport(msgspec.Struct, kw_only=True):
    user: str
    checks: list[Check] = []

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def example_request(contract: Contract, key: str, user: str) -> Any:
    """The contract's example payload of request `key`, for `user`, with its references made
    unique to this run (so a repeated run is not answered as a duplicate)."""
    entry = contract.topics[key]
    payload = codec.decode(entry.example.encode("utf-8"), entry.schema_type, entry.format)
    changes: dict[str, Any] = {}
    if hasattr(payload, "user_id"):
        changes["user_id"] = user
    for ref in ("source_ref", "activity_id"):
        if getattr(payload, ref, None) is not None:
            changes[ref] = f"{user}-{ref}"
    return msgspec.structs.replace(payload, **changes)


async def round_trips(client: MeshClient, contract: Contract, user: str) -> list[Check]:
    """One request per request key of the contract; each must be answered with success."""
    out = []
    for key, entry in sorted(contract.topics.items()):
        if entry.kind != "request":
            continue
        try:
            reply = await client.request(key, example_request(contract, key, user))
        except MeshError as exc:
            out.append(Check(name=f"round trip {key}", ok=False, detail=str(exc)))
            continue
        error = getattr(reply, "error", None)
        ok = bool(getattr(reply, "success", False))
        detail = "answered" if ok else f"error reply: {error}"
        out.append(Check(name=f"round trip {key}", ok=ok, detail=detail))
    return out


async def completion_reaches_stats(client: MeshClient, user: str) -> Check:
    """Complete the first open item of `user`'s timeline; its XP must reach the character."""
    name = "a completion reaches Stats"
    try:
        day = await client.request("timeline_get", TimelineGetRequest(user_id=user))
        items = [i for i in (day.timeline.items if day.timeline else []) if not i.done]
        if not items:
            return Check(name=name, ok=False, detail=f"no open timeline item: {day}")
        done = await client.request(
            "timeline_complete", TimelineCompleteRequest(user_id=user, item_code=items[0].code)
        )
        if not done.success or not done.xp_granted or done.xp_pending:
            return Check(name=name, ok=False, detail=f"completion reply: {done}")
        sheet = await client.request("character_get", CharacterGetRequest(user_id=user))
    except MeshError as exc:
        return Check(name=name, ok=False, detail=str(exc))
    granted = sum(done.xp_granted.values())
    total = sheet.character.total_xp if sheet.success and sheet.character else None
    ok = total == granted
    detail = f"{items[0].code}: +{granted} XP, character total {total}"
    return Check(name=name, ok=ok, detail=detail)


async def run_checks(tester_url: str, doctor_url: str, *, watch_s: float) -> StackReport:
    """All three checks; the doctor watches for `watch_s` seconds from before the first request."""
    contract = load_contract()
    user = f"it-{uuid.uuid4().hex[:10]}"
    report = StackReport(user=user)
    review = Report(generated_at=dt.datetime.now(dt.UTC), flow="")
    doctor = asyncio.create_task(live_checks(contract, doctor_url, watch_s, review))
    await asyncio.sleep(min(1.0, watch_s / 4))  # the doctor subscribed before any request
    try:
        async with MeshClient(tester_url, contract) as client:
            report.checks.append(await completion_reaches_stats(client, f"{user}-c"))
            report.checks.extend(await round_trips(client, contract, user))
    finally:
        await doctor
    critical = [f"{f.service}: {f.issue}" for f in review.issues if f.severity == "critical"]
    others = len(review.issues) - len(critical)
    report.checks.append(
        Check(
            name="doctor's live review",
            ok=not critical and review.watched_s > 0,
            detail="; ".join(critical)
            or f"no critical finding in {review.watched_s:.0f} s ({others} warnings)",
        )
    )
    return report


def render(report: StackReport) -> str:
    lines = [f"integration test (user {report.user})"]
    for c in report.checks:
        lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<34} {c.detail}")
    lines.append("passed" if report.ok else "FAILED")
    return "\n".join(lines)
