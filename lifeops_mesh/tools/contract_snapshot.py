"""A contract as one JSON document: every topic entry plus its payload schemas as JSON Schema.

What `lifeops-mesh contract diff` compares, and what `lifeops_contract/released/` keeps of the last
released contract. The schemas are msgspec's JSON Schema of the payload Structs, the same as the
AsyncAPI export's components.

This module imports nothing but the standard library and msgspec, and reads the contract by duck
typing (`meta.version`, `meta.principals`, `topics`, `schemas`): `contract diff --against REF`
loads it by path into a Python that imports REF's own `lifeops_contract`, so an older release's
contract is snapshotted with its own schemas, whatever its runtime looked like.
"""

from __future__ import annotations

from typing import Any

import msgspec

JsonSchema = dict[str, Any]
REF_PREFIX = "#/schemas/"


class TopicSnapshot(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a subscriber or publisher written against a topic relies on."""

    topic: str
    kind: str
    schema: str
    qos: int
    retain: bool
    publishers: list[str]
    subscribers: list[str]
    format: str = "json"
    reply_schema: str | None = None
    timeout_s: float | None = None
    own_only: bool = False


class Snapshot(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole contract: `contract_version` is topics.toml's `[meta] version`, its major version."""

    contract_version: int
    principals: list[str]
    topics: dict[str, TopicSnapshot]
    schemas: dict[str, JsonSchema]


def snapshot(contract: Any) -> Snapshot:
    """The snapshot of a loaded `mesh.Contract` (read by duck typing; see the module's doc)."""
    topics = {
        key: TopicSnapshot(
            topic=e.topic,
            kind=e.kind,
            schema=e.schema,
            qos=e.qos,
            retain=e.retain,
            publishers=sorted(e.publishers),
            subscribers=sorted(e.subscribers),
            format=getattr(e, "format", "json"),
            reply_schema=e.reply_schema,
            timeout_s=e.timeout_s,
            own_only=getattr(e, "own_only", False),
        )
        for key, e in sorted(contract.topics.items())
    }
    replies = {t.reply_schema for t in topics.values() if t.reply_schema}
    names = sorted({t.schema for t in topics.values()} | replies)
    return Snapshot(
        contract_version=contract.meta.version,
        principals=sorted(contract.meta.principals),
        topics=topics,
        schemas=_schemas(contract.schemas, names),
    )


def _schemas(registry: dict[str, Any], names: list[str]) -> dict[str, JsonSchema]:
    structs = [n for n in names if _is_struct(registry[n])]
    _, components = msgspec.json.schema_components(
        [registry[n] for n in structs], ref_template=REF_PREFIX + "{name}"
    )
    out: dict[str, JsonSchema] = dict(components)
    for n in names:
        if n not in structs:  # a text payload (`format = "text"`): the schema of its type
            out[n] = msgspec.json.schema(registry[n])
    return dict(sorted(out.items()))


def _is_struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def encode(snap: Snapshot) -> bytes:
    """Stable, readable JSON (what is committed under lifeops_contract/released/)."""
    return msgspec.json.format(msgspec.json.encode(snap), indent=2) + b"\n"


def decode(data: bytes | str) -> Snapshot:
    return msgspec.json.decode(data, type=Snapshot)
