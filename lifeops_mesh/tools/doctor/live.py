"""Live checks: watch a running broker for a bounded time with the read-only `doctor` account."""

from __future__ import annotations

import asyncio

import msgspec

from lifeops_mesh.tools.doctor.report import Finding, Report
from lifeops_mesh.tools.watch import Watch
from mesh import Contract, DecodeError, Inbound, MeshError, codec

SYS_FILTERS = ["$SYS/broker/publish/messages/dropped", "$SYS/broker/store/messages/count"]


class Seen(msgspec.Struct, kw_only=True):
    """What the watch saw."""

    requests: dict[bytes, tuple[str, float, float]] = {}  # correlation -> (topic, at, timeout)
    answered: set[bytes] = set()
    status: dict[str, list[str]] = {}
    instances: dict[str, dict[str, list[str]]] = {}  # agent -> instance -> states seen
    dropped: int = 0
    undeclared: set[str] = set()
    bad_payload: dict[str, str] = {}
    stale: set[str] = set()
    dead: int = 0


def observe(contract: Contract, seen: Seen, msg: Inbound, now: float) -> None:
    """Take one message into account."""
    if msg.topic.startswith("$SYS/"):
        if msg.topic.endswith("dropped"):
            seen.dropped = int(msg.payload or b"0")
        return
    found = contract.match(msg.topic)
    if found is None:
        (seen.stale if msg.retain else seen.undeclared).add(msg.topic)
        return
    entry, params = found
    if entry.kind == "reply":
        if msg.correlation_data:
            seen.answered.add(msg.correlation_data)
        return
    if entry.key == "status":
        seen.status.setdefault(params["agent"], []).append(msg.payload.decode(errors="replace"))
    if entry.key == "instance_status":
        mine = seen.instances.setdefault(params["agent"], {})
        mine.setdefault(params["instance"], []).append(msg.payload.decode(errors="replace"))
    if entry.key == "dlq" and not msg.retain:
        seen.dead += 1
    try:
        codec.decode(msg.payload, entry.schema_type, entry.format)
    except DecodeError as exc:
        if msg.retain:
            seen.stale.add(msg.topic)
        else:
            seen.bad_payload.setdefault(msg.topic, exc.message[:120])
    if entry.reply_schema and msg.response_topic and msg.correlation_data:
        seen.requests[msg.correlation_data] = (msg.topic, now, float(entry.timeout_s or 5))


async def live_checks(contract: Contract, broker_url: str, watch_s: float, report: Report) -> None:
    seen = Seen()
    loop = asyncio.get_running_loop()
    try:
        async with Watch(broker_url, ["#", *SYS_FILTERS]) as watch:
            async for msg in watch.stream(timeout=watch_s):
                observe(contract, seen, msg, loop.time())
    except MeshError as exc:
        report.add(
            Finding(
                service="mosquitto",
                issue=f"cannot watch the broker: {exc}",
                impact="live checks did not run",
                fix="check --broker and the doctor account",
            )
        )
        return
    report.watched_s = watch_s
    unanswered = unanswered_requests(contract, seen, loop.time(), report)
    traffic_findings(contract, seen, report)
    availability_findings(contract, seen, report)
    report.check(
        "live: no undeclared traffic",
        not seen.undeclared,
        ", ".join(sorted(seen.undeclared)) or "none seen",
    )
    report.check(
        "live: every request answered in time",
        not unanswered,
        f"{len(seen.requests)} requests seen",
    )


def _first_of(contract: Contract, topic: str, role: str) -> str:
    found = contract.match(topic)
    if found is None:
        return "?"
    names = found[0].subscribers if role == "subscriber" else found[0].publishers
    return names[0] if names else "?"


def unanswered_requests(contract: Contract, seen: Seen, now: float, report: Report) -> list[str]:
    unanswered = [
        t for c, (t, at, to) in seen.requests.items() if c not in seen.answered and now - at > to
    ]
    for topic in sorted(set(unanswered)):
        report.add(
            Finding(
                service=_first_of(contract, topic, "subscriber"),
                issue=f"requests on {topic} got no reply within their timeout "
                f"({unanswered.count(topic)} seen)",
                impact="callers time out and retry",
                fix="start the responding agent; check its health and logs",
            )
        )
    return unanswered


def traffic_findings(contract: Contract, seen: Seen, report: Report) -> None:
    for topic in sorted(seen.undeclared):
        report.add(
            Finding(
                service="unknown publisher",
                issue=f"traffic on undeclared topic {topic}",
                impact="nothing consumes it, or someone bypasses the contract",
                fix="declare it in topics.toml or stop the publisher",
            )
        )
    for topic, why in sorted(seen.bad_payload.items()):
        report.add(
            Finding(
                service=_first_of(contract, topic, "publisher"),
                issue=f"payload on {topic} fails its schema: {why}",
                impact="dead-lettered, not processed",
                fix="fix the publisher; see `lifeops-mesh dlq list`",
            )
        )
    for topic in sorted(seen.stale):
        report.add(
            Finding(
                service="retained",
                issue=f"stale retained message on {topic}",
                impact="shows up again after every restart (ghost entities in HA)",
                fix=f"mosquitto_pub -r -n -t '{topic}' (an empty retained message)",
            )
        )
    if seen.dropped:
        report.add(
            Finding(
                service="mosquitto",
                issue=f"{seen.dropped} messages dropped (queue limits)",
                impact="receivers lost messages; receipts resend LifeOps' ones",
                fix="raise max_queued_messages or bring subscribers back",
            )
        )
    if seen.dead:
        report.add(
            Finding(
                service="mesh",
                issue=f"{seen.dead} dead letters during the watch",
                impact="messages not processed",
                fix="see them with `lifeops-mesh dlq list`, "
                "send one again with `lifeops-mesh dlq replay ID`",
                severity="warning",
            )
        )


def availability_findings(contract: Contract, seen: Seen, report: Report) -> None:
    """An agent is offline when none of its instances is online (or, without instance topics,
    its aggregate topic says so); flapping is counted per instance: one of several instances
    dying flips the aggregate topic for an instant, which is no flapping."""
    for agent in contract.agents:
        mine = seen.instances.get(agent, {})
        states = seen.status.get(agent, [])
        if mine:
            offline = not any(s[-1] == "online" for s in mine.values())
            states = max(mine.values(), key=len)
        else:
            offline = bool(states) and states[-1] == "offline"
        if offline:
            report.add(
                Finding(
                    service=agent,
                    issue="agent offline",
                    impact="its requests time out",
                    fix=f"lifeops-mesh run {agent}",
                )
            )
        if len(states) > 3:
            report.add(
                Finding(
                    service=agent,
                    issue=f"availability flapping ({len(states)} changes)",
                    impact="reconnect loop",
                    fix="check the agent's logs",
                    severity="warning",
                )
            )
