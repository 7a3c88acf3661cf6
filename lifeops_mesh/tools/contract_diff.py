"""`lifeops-mesh contract diff`: which changes between two contracts break whom.

A payload flows from a topic's publishers to its subscribers; a reply flows back, from the
subscriber that answers to the publisher that asked. So every change is judged for the two sides
apart, by msgspec's schema-evolution rules (readers ignore unknown fields; a missing field takes
its default):

| change | breaks |
|---|---|
| topic removed, pattern, kind, QoS, retain or format changed | publishers and subscribers |
| principal removed from publishers / subscribers (the ACL) | publishers / subscribers |
| own_only turned on | subscribers |
| timeout shorter (a responder written for the old one may answer too late) | subscribers |
| reply removed from a request | publishers |
| field removed, or a required one made optional | the side that reads it |
| new required field, or an optional one made required | the side that writes it |
| field type widened (more values accepted) | the side that reads it |
| field type narrowed (fewer values accepted) | the side that writes it |
| field retyped (neither) | both |
| topic, principal, optional field, longer timeout added | nobody |

Nested Structs are compared field by field; other types by the values their JSON Schema accepts
(types, enums, unions, length and range bounds).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import msgspec

from lifeops_mesh.tools.contract_snapshot import REF_PREFIX, JsonSchema, Snapshot, TopicSnapshot

Side = Literal["publishers", "subscribers"]
BOTH: frozenset[Side] = frozenset(("publishers", "subscribers"))
NOBODY: frozenset[Side] = frozenset()
_IGNORED = frozenset(("title", "description", "default", "examples", "$comment"))


class Change(msgspec.Struct, frozen=True):
    """One difference: where (topic key and path), what changed, and whom it breaks."""

    where: str
    what: str
    breaks: frozenset[Side] = NOBODY

    @property
    def breaking(self) -> bool:
        return bool(self.breaks)

    def line(self) -> str:
        who = " and ".join(sorted(self.breaks))
        verdict = f"BREAKING for {who}" if self.breaks else "compatible"
        return f"{verdict}: {self.where}: {self.what}"


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """Every change from `old` to `new`, breaking ones first."""
    changes: list[Change] = []
    for key in sorted(old.topics.keys() | new.topics.keys()):
        before, after = old.topics.get(key), new.topics.get(key)
        if after is None:
            changes.append(Change(key, f"topic {before.topic if before else key} removed", BOTH))
        elif before is None:
            changes.append(Change(key, f"topic {after.topic} added"))
        else:
            changes.extend(_topic(key, before, after, old, new))
    return sorted(changes, key=lambda c: (not c.breaking, c.where))


def _topic(
    key: str, a: TopicSnapshot, b: TopicSnapshot, old: Snapshot, new: Snapshot
) -> Iterator[Change]:
    for name in ("topic", "kind", "qos", "retain", "format"):
        was, now = getattr(a, name), getattr(b, name)
        if was != now:
            yield Change(key, f"{name} {was!r} -> {now!r}", BOTH)
    yield from _principals(key, "publishers", a.publishers, b.publishers)
    yield from _principals(key, "subscribers", a.subscribers, b.subscribers)
    if a.own_only != b.own_only:
        what = f"own_only {a.own_only} -> {b.own_only}"
        yield Change(key, what, _only("subscribers", b.own_only))
    if bool(a.reply_schema) == bool(b.reply_schema):  # else the reply's line says it all
        yield from _timeout(key, a.timeout_s, b.timeout_s)
    payload = _Schemas(old.schemas, new.schemas)
    yield from payload.flow(
        f"{key} payload", _ref(a.schema), _ref(b.schema), writer="publishers", reader="subscribers"
    )
    if a.reply_schema and not b.reply_schema:
        yield Change(key, f"reply {a.reply_schema} removed", frozenset(("publishers",)))
    elif b.reply_schema and not a.reply_schema:
        yield Change(key, f"reply {b.reply_schema} added")
    elif a.reply_schema and b.reply_schema:
        yield from payload.flow(
            f"{key} reply",
            _ref(a.reply_schema),
            _ref(b.reply_schema),
            writer="subscribers",
            reader="publishers",
        )


def _only(side: Side, when: bool) -> frozenset[Side]:
    return frozenset((side,)) if when else NOBODY


def _principals(key: str, side: Side, was: list[str], now: list[str]) -> Iterator[Change]:
    for p in sorted(set(was) - set(now)):
        yield Change(key, f"{p} removed from {side}", frozenset((side,)))
    for p in sorted(set(now) - set(was)):
        yield Change(key, f"{p} added to {side}")


def _timeout(key: str, was: float | None, now: float | None) -> Iterator[Change]:
    if was == now:
        return
    shorter = was is not None and now is not None and now < was
    yield Change(key, f"timeout_s {was} -> {now}", _only("subscribers", shorter))


def _ref(name: str) -> JsonSchema:
    return {"$ref": REF_PREFIX + name}


class _Schemas:
    """The two snapshots' schema components, compared as a writer and a reader see them."""

    def __init__(self, old: dict[str, JsonSchema], new: dict[str, JsonSchema]) -> None:
        self.old = old
        self.new = new

    def _resolve(self, schema: JsonSchema, components: dict[str, JsonSchema]) -> JsonSchema:
        seen: set[str] = set()
        while "$ref" in schema:
            name = str(schema["$ref"]).removeprefix(REF_PREFIX)
            if name in seen or name not in components:
                break
            seen.add(name)
            schema = components[name]
        return {k: v for k, v in schema.items() if k not in _IGNORED}

    def flow(
        self, where: str, a: JsonSchema, b: JsonSchema, *, writer: Side, reader: Side
    ) -> Iterator[Change]:
        """Changes of a value written by `writer` and read by `reader`."""
        ra, rb = self._resolve(a, self.old), self._resolve(b, self.new)
        if _is_object(ra) and _is_object(rb):
            yield from self._fields(where, ra, rb, writer=writer, reader=reader)
            return
        if ra == rb and "$ref" not in repr(ra):
            return
        old_in_new = self._subset(ra, self.old, rb, self.new)
        new_in_old = self._subset(rb, self.new, ra, self.old)
        if old_in_new and new_in_old:
            return
        if old_in_new:  # the new type accepts more: old readers may meet values they refuse
            yield Change(where, f"type widened: {_show(ra)} -> {_show(rb)}", frozenset((reader,)))
        elif new_in_old:  # the new type accepts less: old writers may send what is refused
            yield Change(where, f"type narrowed: {_show(ra)} -> {_show(rb)}", frozenset((writer,)))
        else:
            yield Change(where, f"type changed: {_show(ra)} -> {_show(rb)}", BOTH)

    def _fields(
        self, where: str, a: JsonSchema, b: JsonSchema, *, writer: Side, reader: Side
    ) -> Iterator[Change]:
        pa, pb = a.get("properties", {}), b.get("properties", {})
        ra, rb = set(a.get("required", ())), set(b.get("required", ()))
        for name in sorted(pa.keys() - pb.keys()):
            yield Change(f"{where}.{name}", "field removed", frozenset((reader,)))
        for name in sorted(pb.keys() - pa.keys()):
            if name in rb:
                yield Change(f"{where}.{name}", "new required field", frozenset((writer,)))
            elif a.get("additionalProperties") is False:
                yield Change(f"{where}.{name}", "new field, old readers refuse unknown ones",
                             frozenset((reader,)))  # fmt: skip
            else:
                yield Change(f"{where}.{name}", "new optional field")
        for name in sorted(pa.keys() & pb.keys()):
            path = f"{where}.{name}"
            if name in ra and name not in rb:
                yield Change(path, "required -> optional", frozenset((reader,)))
            elif name in rb and name not in ra:
                yield Change(path, "optional -> required", frozenset((writer,)))
            yield from self.flow(path, pa[name], pb[name], writer=writer, reader=reader)

    def _subset(self, x: JsonSchema, xs: dict[str, JsonSchema], y: JsonSchema,
                ys: dict[str, JsonSchema]) -> bool:  # fmt: skip
        """Whether every value `x` accepts is accepted by `y` (conservative: False when unsure)."""
        x, y = self._resolve(x, xs), self._resolve(y, ys)
        if x == y and "$ref" not in repr(x):  # a name may mean another thing in the other one
            return True
        if "anyOf" in x:
            return all(self._subset(alt, xs, y, ys) for alt in x["anyOf"])
        if "anyOf" in y:
            return any(self._subset(x, xs, alt, ys) for alt in y["anyOf"])
        if "enum" in x:
            return all(_value_in(v, y) for v in x["enum"])
        if "enum" in y or "const" in y:
            return False
        if not _same_type(x, y):
            return False
        if not _bounds_within(x, y):
            return False
        if x.get("type") == "array":
            return self._subset(x.get("items", {}), xs, y.get("items", {}), ys)
        if x.get("type") == "object":
            return self._object_subset(x, xs, y, ys)
        return True

    def _object_subset(self, x: JsonSchema, xs: dict[str, JsonSchema], y: JsonSchema,
                       ys: dict[str, JsonSchema]) -> bool:  # fmt: skip
        px, py = x.get("properties", {}), y.get("properties", {})
        if not set(y.get("required", ())) <= set(x.get("required", ())):
            return False
        if y.get("additionalProperties") is False and not px.keys() <= py.keys():
            return False
        if not all(self._subset(px[n], xs, py[n], ys) for n in px.keys() & py.keys()):
            return False
        ax, ay = x.get("additionalProperties"), y.get("additionalProperties")
        if isinstance(ax, dict) and isinstance(ay, dict):
            return self._subset(ax, xs, ay, ys)
        return not (isinstance(ay, dict) and ax is None)


def _is_object(schema: JsonSchema) -> bool:
    return schema.get("type") == "object" and "properties" in schema


def _same_type(x: JsonSchema, y: JsonSchema) -> bool:
    tx, ty = x.get("type"), y.get("type")
    return tx == ty or (tx == "integer" and ty == "number") or (ty is None and not y)


_LOWER = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_UPPER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")


def _bounds_within(x: JsonSchema, y: JsonSchema) -> bool:
    """x's bounds lie within y's (every bound y sets, x sets at least as tight)."""
    for name in _LOWER:
        if name in y and (name not in x or x[name] < y[name]):
            return False
    for name in _UPPER:
        if name in y and (name not in x or x[name] > y[name]):
            return False
    return all(
        name not in y or x.get(name) == y[name] for name in ("pattern", "format", "multipleOf")
    )


def _value_in(value: object, schema: JsonSchema) -> bool:
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(_value_in(value, alt) for alt in schema["anyOf"])
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
    return schema.get("type") == kinds.get(type(value))


def _show(schema: JsonSchema) -> str:
    text = msgspec.json.encode(schema).decode()
    return text if len(text) <= 80 else text[:77] + "..."
