"""`lifeops-mesh health`: every agent's availability and health, and the broker's $SYS figures."""

from __future__ import annotations

import contextlib

import msgspec

from lifeops_contract import contract as default_contract
from lifeops_mesh.tools.watch import Watch
from mesh import DecodeError, HealthReport, codec

SYS = {
    "$SYS/broker/clients/connected": "clients connected",
    "$SYS/broker/publish/messages/dropped": "messages dropped (queue limits)",
    "$SYS/broker/store/messages/count": "messages stored (queued and retained)",
    "$SYS/broker/retained messages/count": "retained messages",
    "$SYS/broker/version": "version",
}


class MeshHealth(msgspec.Struct):
    agents: dict[str, str]  # name -> online/offline/unknown (online while any instance is)
    health: dict[str, HealthReport]  # name -> the report of an online instance (else the last)
    broker: dict[str, str]
    instances: dict[str, dict[str, str]] = {}  # name -> instance -> online/offline

    @property
    def ok(self) -> bool:
        # "unknown": never seen on this broker (not deployed); that is not a failure. The
        # last health report of an agent that is not running says nothing about it now.
        return all(v != "offline" for v in self.agents.values()) and all(
            h.status == "healthy" for a, h in self.health.items() if self.agents.get(a) == "online"
        )


async def gather(broker_url: str, listen_s: float = 0.7) -> MeshHealth:
    contract = default_contract()
    filters = ["+/status", "+/status/+", "+/health", "+/health/+", *SYS]
    async with Watch(broker_url, filters) as watch:
        msgs = await watch.settle(quiet=listen_s)
    aggregate = {a: "unknown" for a in contract.agents}
    instances: dict[str, dict[str, str]] = {}
    by_instance: dict[str, dict[str, HealthReport]] = {}
    health: dict[str, HealthReport] = {}
    broker: dict[str, str] = {}
    for m in msgs:
        if m.topic in SYS:
            broker[SYS[m.topic]] = m.payload.decode("utf-8", "replace")
            continue
        found = contract.match(m.topic)
        if found is None:
            continue
        entry, params = found
        text = m.payload.decode("utf-8", "replace")
        if entry.key == "status":
            aggregate[params["agent"]] = text
        elif entry.key == "instance_status":
            instances.setdefault(params["agent"], {})[params["instance"]] = text
        elif entry.key in ("health", "instance_health"):
            with contextlib.suppress(DecodeError):
                rep = codec.decode(m.payload, HealthReport)
                if entry.key == "health":
                    health[params["agent"]] = rep
                else:
                    by_instance.setdefault(params["agent"], {})[params["instance"]] = rep
    agents = {a: _availability(aggregate[a], instances.get(a, {})) for a in aggregate}
    for agent, reports in by_instance.items():
        up = [r for i, r in reports.items() if instances.get(agent, {}).get(i) == "online"]
        if up:  # what a running instance says, not what a stopped one said last
            health[agent] = min(up, key=lambda r: r.status == "healthy")
    dropped = SYS["$SYS/broker/publish/messages/dropped"]
    if dropped not in broker:
        # Mosquitto sends a $SYS value only when it changed within its sys_interval (10 s), so a
        # steady counter rarely arrives while we listen; the agents listen all the time.
        seen = [(r.broker_dropped, a) for a, r in health.items() if r.broker_dropped is not None]
        if seen:
            value, agent = max(seen)
            broker[dropped] = f"{value} (as {agent} last saw it)"
        else:
            broker[dropped] = "not sent while we listened (Mosquitto sends it only on change)"
    return MeshHealth(agents=agents, health=health, broker=broker, instances=instances)


def _availability(aggregate: str, instances: dict[str, str]) -> str:
    """An agent is available while any of its instances is (the aggregate topic can lag)."""
    if not instances:
        return aggregate
    return "online" if "online" in instances.values() else "offline"


def render(h: MeshHealth) -> str:
    lines = ["agent       availability  health     details"]
    for name, state in h.agents.items():
        rep = h.health.get(name)
        status = rep.status if rep else "-"
        details = ""
        if rep:
            bad = [f"{k}: {c.detail}" for k, c in rep.checks.items() if not c.ok]
            details = "; ".join(bad) or "all checks pass"
            if rep.receipts_pending:
                details += (
                    f"; {rep.receipts_pending} waiting for a receipt "
                    f"(oldest {rep.receipts_oldest_age_seconds:.0f} s)"
                )
            if rep.outbox_pending:
                details += f"; {rep.outbox_pending} events unpublished"
        mine = h.instances.get(name, {})
        if len(mine) > 1 or any(v != "online" for v in mine.values()):
            up = sorted(i for i, v in mine.items() if v == "online")
            down = sorted(i for i, v in mine.items() if v != "online")
            details += f"; instances online: {', '.join(up) or 'none'}"
            details += f" (offline: {', '.join(down)})" if down else ""
        lines.append(f"{name:<11} {state:<13} {status:<10} {details.lstrip('; ')}")
    lines.append("")
    lines.append("broker")
    for label in SYS.values():
        lines.append(f"  {label:<40} {h.broker.get(label, '-')}")
    return "\n".join(lines)
