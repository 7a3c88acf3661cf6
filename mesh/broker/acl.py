"""The Mosquitto ACL generated from topics.toml: each principal gets exactly its rights."""

from __future__ import annotations

from mesh.contract import Contract

HEADER = """\
# Mosquitto ACL for LifeOps Mesh: GENERATED from topics.toml, do not edit.
# Regenerate with: lifeops-mesh broker acl > broker/acl
"""

# Operational read-only access for the manual-testing account (broker figures in `health`).
# Agents read the broker's dropped-message counter to export it as a metric.
DROPPED = "$SYS/broker/publish/messages/dropped"
EXTRA_READ = {
    "tester": ["$SYS/#"],
    "lifeops": [DROPPED],
    "stats": [DROPPED],
    "ha_bridge": [DROPPED],
}


def _filter_for(contract: Contract, key: str, principal: str, publishing: bool) -> str:
    entry = contract.entry(key)
    if entry.kind == "reply":
        # Responders write to any requester's response topic; a requester reads only its own.
        return "reply/+/+" if publishing else f"reply/{principal}/+"
    # An agent writes only its own {agent} topics; anyone reading sees every agent's.
    agent = principal if publishing and principal in contract.meta.agents else None
    return contract.subscription(key, agent=agent)


def generate_acl(contract: Contract) -> str:
    lines = [HEADER]
    for principal in contract.meta.principals:
        rights: dict[str, set[str]] = {}
        for key, entry in contract.topics.items():
            if principal in entry.publishers:
                rights.setdefault(_filter_for(contract, key, principal, True), set()).add("write")
            if principal in entry.subscribers:
                f = _filter_for(contract, key, principal, False)
                rights.setdefault(f, set()).add("read")
        for f in EXTRA_READ.get(principal, []):
            rights.setdefault(f, set()).add("read")
        lines.append(f"user {principal}")
        for f in sorted(rights):
            r = rights[f]
            mode = "readwrite" if r == {"read", "write"} else next(iter(r))
            lines.append(f"topic {mode} {f}")
        lines.append("")
    return "\n".join(lines)
