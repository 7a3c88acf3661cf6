"""`lifeops-mesh contract asyncapi`: an AsyncAPI 3.0 document generated from topics.toml."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from mesh import Contract, TopicEntry, __version__

_PARAM = re.compile(r"\{([a-z_]+)\}")
PARAM_DOCS = {
    "agent": "Agent name: lifeops, stats or ha_bridge.",
    "user_id": "A UUID or 1-64 characters of [A-Za-z0-9_-]; ids equal after folding case and "
    "-/_ are one person's (a second spelling is refused: user_id_taken).",
    "requester": "Username of the requester (its response topics live under reply/<username>/).",
    "request": "Free level chosen by the requester.",
}


def _binding(qos: int, retain: bool) -> dict[str, Any]:
    return {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": "0.2.0"}}


def generate(contract: Contract, *, host: str = "localhost:1883") -> dict[str, Any]:
    components, messages = _messages(contract)
    channels = {key: _channel(contract, key) for key in contract.topics}
    operations = {
        key: _operation(key, e) for key, e in contract.topics.items() if e.kind != "reply"
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "LifeOps Mesh",
            "version": __version__,
            "description": "Topics of the LifeOps Mesh, generated from topics.toml.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "mosquitto": {
                "host": host,
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "Mosquitto from broker/ (username/password, ACL)",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components, "messages": messages},
    }


def _messages(contract: Contract) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON schemas of the payload Structs, one message per schema name)."""
    names = sorted(
        {e.schema for e in contract.topics.values()}
        | {e.reply_schema for e in contract.topics.values() if e.reply_schema}
    )
    schemas = contract.schemas
    struct_names = [n for n in names if isinstance(schemas[n], type)]
    _, components = msgspec.json.schema_components(
        [schemas[n] for n in struct_names], ref_template="#/components/schemas/{name}"
    )
    messages: dict[str, Any] = {}
    for n in names:
        if n in struct_names:
            payload: dict[str, Any] = {"$ref": f"#/components/schemas/{n}"}
            ctype = "application/json"
        else:
            payload = msgspec.json.schema(schemas[n])
            ctype = "text/plain"
        messages[n] = {"name": n, "title": n, "contentType": ctype, "payload": payload}
    return components, messages


def _channel(contract: Contract, key: str) -> dict[str, Any]:
    e = contract.entry(key)
    channel: dict[str, Any] = {
        "address": e.topic,
        "description": e.description,
        "messages": {e.schema: {"$ref": f"#/components/messages/{e.schema}"}},
    }
    if e.kind == "reply":
        replies = sorted({x.reply_schema for x in contract.topics.values() if x.reply_schema})
        channel["messages"] = {n: {"$ref": f"#/components/messages/{n}"} for n in replies}
    params = _PARAM.findall(e.topic)
    if params:
        channel["parameters"] = {p: {"description": PARAM_DOCS.get(p, p)} for p in params}
    return channel


def _operation(key: str, e: TopicEntry) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": "send",
        "title": key,
        "summary": f"Published by {', '.join(e.publishers)}; received by "
        f"{', '.join(e.subscribers)}.",
        "channel": {"$ref": f"#/channels/{key}"},
        "messages": [{"$ref": f"#/channels/{key}/messages/{e.schema}"}],
        "bindings": _binding(e.qos, e.retain),
    }
    if e.reply_schema:
        op["reply"] = {
            "address": {
                "description": "The MQTT v5 response topic of the request.",
                "location": "$message.header#/responseTopic",
            },
            "channel": {"$ref": "#/channels/reply"},
            "messages": [{"$ref": f"#/channels/reply/messages/{e.reply_schema}"}],
        }
    return op
