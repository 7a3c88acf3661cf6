"""`lifeops-mesh health`: every agent's availability and health, and the broker's $SYS figures."""

from __future__ import annotations

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
    agents: dict[str, str]  # name -> online/offline/unknown
    health: dict[str, HealthReport]
    broker: dict[str, str]

    @property
    def ok(self) -> bool:
        # "unknown": never seen on this broker (not deployed); that is not a failure. The
        # last health report of an agent that is not running says nothing about it now.
        return all(v != "offline" for v in self.agents.values()) and all(
            h.status == "healthy" for a, h in self.health.items() if self.agents.get(a) == "online"
        )


async def gather(broker_url: str) -> MeshHealth:
    contract = default_contract()
    filters = ["+/status", "+/health", *SYS]
    async with Watch(broker_url, filters) as watch:
        msgs = await watch.settle(quiet=0.7)
    agents = {a: "unknown" for a in contract.agents}
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
        if entry.key == "status":
            agents[params["agent"]] = m.payload.decode("utf-8", "replace")
        elif entry.key == "health":
            try:
                health[params["agent"]] = codec.decode(m.payload, HealthReport)
            except DecodeError:
                pass
    return MeshHealth(agents=agents, health=health, broker=broker)


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
        lines.append(f"{name:<11} {state:<13} {status:<10} {details}")
    lines.append("")
    lines.append("broker")
    for label in SYS.values():
        lines.append(f"  {label:<40} {h.broker.get(label, '-')}")
    return "\n".join(lines)
