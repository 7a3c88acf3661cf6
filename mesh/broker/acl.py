"""The Mosquitto ACL generated from topics.toml: each principal gets exactly its rights."""

from __future__ import annotations

from mesh.contract import Contract
from mesh.topics import matches

HEADER = """\
# Mosquitto ACL for LifeOps Mesh: GENERATED from topics.toml, do not edit.
# Regenerate with: lifeops-mesh broker acl > broker/acl
"""

# Every agent reads the broker's dropped-message counter to export it as a metric.
DROPPED = "$SYS/broker/publish/messages/dropped"


def extra_reads(contract: Contract, principal: str) -> list[str]:
    """Filters `principal` may read beyond its contract entries ([meta.extra_read], and the
    dropped-message counter for agents)."""
    extra = list(contract.meta.extra_read.get(principal, []))
    if principal in contract.agents and DROPPED not in extra:
        extra.insert(0, DROPPED)
    return extra


def _filter_for(contract: Contract, key: str, principal: str, publishing: bool) -> str:
    entry = contract.entry(key)
    if entry.kind == "reply":
        # Responders write to any requester's response topic; a requester reads only its own.
        return "reply/+/+" if publishing else f"reply/{principal}/+"
    # An agent writes only its own {agent} topics; anyone reading sees every agent's (unless
    # the entry is `own_only`: then each agent reads its own).
    own = publishing or entry.own_only
    agent = principal if own and principal in contract.agents else None
    return contract.subscription(key, agent=agent)


def rights_of(contract: Contract, principal: str) -> dict[str, set[str]]:
    """Topic filter -> {"read", "write"}: what the generated ACL grants `principal`."""
    rights: dict[str, set[str]] = {}
    for key, entry in contract.topics.items():
        if principal in entry.publishers:
            rights.setdefault(_filter_for(contract, key, principal, True), set()).add("write")
        if principal in entry.subscribers:
            rights.setdefault(_filter_for(contract, key, principal, False), set()).add("read")
    for f in extra_reads(contract, principal):
        rights.setdefault(f, set()).add("read")
    return rights


def broker_allows(contract: Contract, principal: str, topic: str, mode: str) -> bool:
    return any(
        mode in modes and matches(f, topic) for f, modes in rights_of(contract, principal).items()
    )


def shadowed(contract: Contract) -> list[tuple[str, str, str]]:
    """(principal, literal topic, mode) the broker must allow although the contract does not:
    a per-user pattern such as stats/character/{user_id} also covers the literal request topic
    stats/character/get. Mosquitto ACLs cannot subtract, so the runtime refuses these (the
    contract matches literal topics first) and the user ids that would collide are reserved."""
    out = []
    literals = [e for e in contract.topics.values() if not e.params]
    for principal in contract.meta.principals:
        if "#" in contract.meta.extra_read.get(principal, []):
            continue  # reads everything by design (the doctor)
        for e in literals:
            for mode, allowed in (
                ("write", principal in e.publishers),
                ("read", principal in e.subscribers),
            ):
                if not allowed and broker_allows(contract, principal, e.topic, mode):
                    out.append((principal, e.topic, mode))
    return out


def generate_acl(contract: Contract) -> str:
    lines = [HEADER]
    overlaps = shadowed(contract)
    if overlaps:
        lines.append("# Wider than the contract where a per-user pattern covers a literal topic")
        lines.append("# (ACLs cannot subtract; the agents refuse these, see mesh.broker.acl):")
        lines += [f"#   {p} may {m} {t}" for p, t, m in overlaps]
        lines.append("")
    for principal in contract.meta.principals:
        lines += user_block(contract, principal)
    return "\n".join(lines)


def user_block(contract: Contract, principal: str) -> list[str]:
    """The `user` block of `principal` (its lines, and an empty one to end it)."""
    rights = rights_of(contract, principal)
    lines = [f"user {principal}"]
    for f in sorted(rights):
        r = rights[f]
        mode = "readwrite" if r == {"read", "write"} else next(iter(r))
        lines.append(f"topic {mode} {f}")
    return [*lines, ""]
