"""A topics.toml contract as typed entries: topic rendering, subscription filters, matching, checks.

The runtime knows no particular contract: an application loads its own file with the registry of
its payload schemas (`Contract.load(path, schemas)`), on top of the runtime's `RUNTIME_SCHEMAS`.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from mesh import codec
from mesh.dedup import DedupRule, dedup_problems, parse_dedup
from mesh.errors import ContractError, DecodeError
from mesh.schemas import RUNTIME_SCHEMAS

Kind = Literal["event", "request", "state", "availability", "dlq", "reply"]
_PARAM = re.compile(r"^\{([a-z_]+)\}$")
_SAFE_LEVEL = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Meta(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    principals: list[str]
    # Topic filters a principal may read beyond its entries (e.g. `$SYS/#` for operators).
    extra_read: dict[str, list[str]] = {}


class TopicEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, dict=True):
    """One contract key: topic pattern, kind, schemas, QoS, retain, publishers and subscribers."""

    topic: str
    kind: Kind
    schema: str
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    publishers: list[str]
    subscribers: list[str]
    description: str
    example: str
    format: codec.PayloadFormat = "json"
    reply_schema: str | None = None
    timeout_s: float | None = None
    # How a repeat is recognised (mesh/dedup.py; grammar in topics.toml's header).
    dedup: str | None = None
    # For an {agent} topic: each agent reads only its own (e.g. the markers it sends itself).
    own_only: bool = False
    key: str = ""

    @property
    def levels(self) -> list[str]:
        return self.topic.split("/")

    @property
    def params(self) -> list[str]:
        return [m.group(1) for lvl in self.levels if (m := _PARAM.match(lvl))]

    @property
    def schema_type(self) -> Any:
        """The payload type (resolved from the contract's schema registry at load)."""
        return self.__dict__["_schema_type"]

    @property
    def reply_type(self) -> Any:
        """The reply payload type, None when the entry is no request/response pair."""
        return self.__dict__["_reply_type"]

    @property
    def dedup_rule(self) -> DedupRule:
        """The parsed `dedup` expression: the inbox key of this entry's messages (NO_CLAIM
        when the entry declares none). Raises ContractError when it does not parse."""
        rule = self.__dict__.get("_dedup_rule")
        if rule is None:
            rule = self.__dict__["_dedup_rule"] = parse_dedup(self.dedup)
        return rule


class Contract(msgspec.Struct, forbid_unknown_fields=True, dict=True):
    """A loaded topics.toml: its meta and its entries by key (`Contract.load(path, schemas)`)."""

    meta: Meta
    topics: dict[str, TopicEntry]

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, schemas: Mapping[str, Any] | None = None) -> Contract:
        """Load and check `path`; `schemas` maps the schema names it uses to their types."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ContractError(f"{path}: {exc}") from exc
        try:
            contract = msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise ContractError(f"{path}: {exc}") from exc
        contract._bind({**RUNTIME_SCHEMAS, **(schemas or {})})
        problems = contract.problems()
        if problems:
            raise ContractError(f"{path}: " + "; ".join(problems))
        return contract

    def _bind(self, schemas: Mapping[str, Any]) -> None:
        """Name each entry by its key and resolve its schemas from the registry."""
        self.__dict__["schemas"] = dict(schemas)
        for key, entry in self.topics.items():
            entry.key = key
            entry.__dict__["_schema_type"] = schemas.get(entry.schema)
            entry.__dict__["_reply_type"] = (
                schemas.get(entry.reply_schema) if entry.reply_schema else None
            )

    @property
    def schemas(self) -> dict[str, Any]:
        """Schema name -> type: the runtime's and the application's."""
        return dict(self.__dict__.get("schemas", RUNTIME_SCHEMAS))

    @functools.cached_property
    def agents(self) -> list[str]:
        """The principals that run as agents: those publishing an `{agent}` topic (their
        availability, health and dead letters), in the order the contract names them."""
        found = {p for e in self.topics.values() if "{agent}" in e.topic for p in e.publishers}
        return [p for p in self.meta.principals if p in found]

    def problems(self) -> list[str]:
        """Every inconsistency in the contract, as readable sentences (empty when sound)."""
        out: list[str] = []
        principals = set(self.meta.principals)
        seen_topics: dict[str, str] = {}
        schemas = self.schemas
        for key, e in self.topics.items():
            where = f"topics.{key}"
            if e.schema not in schemas:
                out.append(f"{where}: schema {e.schema!r} is not in the schema registry")
                continue
            if e.reply_schema is not None:
                if e.reply_schema not in schemas:
                    out.append(
                        f"{where}: reply_schema {e.reply_schema!r} is not in the schema registry"
                    )
                if e.timeout_s is None or e.timeout_s <= 0:
                    out.append(f"{where}: a request/response pair needs a positive timeout_s")
            if e.kind == "request" and e.reply_schema is None:
                out.append(f"{where}: kind request needs reply_schema and timeout_s")
            for who in (*e.publishers, *e.subscribers):
                if who not in principals:
                    out.append(f"{where}: unknown principal {who!r}")
            for lvl in e.levels:
                if not lvl or ("{" in lvl and not _PARAM.match(lvl)) or lvl in ("+", "#"):
                    out.append(f"{where}: bad topic level {lvl!r} in {e.topic!r}")
            if e.topic in seen_topics:
                out.append(f"{where}: topic {e.topic!r} is also declared by {seen_topics[e.topic]}")
            seen_topics[e.topic] = key
            try:
                codec.decode(e.example.encode(), schemas[e.schema], e.format)
            except DecodeError as exc:
                out.append(f"{where}: example does not match {e.schema}: {exc}")
            try:
                out += [f"{where}: {p}" for p in dedup_problems(e.dedup_rule, schemas[e.schema])]
            except ContractError as exc:
                out.append(f"{where}: {exc}")
        return out

    # -- lookups -------------------------------------------------------------------------------

    def entry(self, key: str) -> TopicEntry:
        try:
            return self.topics[key]
        except KeyError:
            raise ContractError(f"topic key {key!r} is not declared in topics.toml") from None

    def topic(self, key: str, *, agent: str | None = None, **params: str) -> str:
        """The concrete topic for `key`; every parameter must be one safe topic level."""
        e = self.entry(key)
        levels: list[str] = []
        for lvl in e.levels:
            m = _PARAM.match(lvl)
            if not m:
                levels.append(lvl)
                continue
            name = m.group(1)
            value = agent if name == "agent" else params.get(name)
            if value is None:
                raise ContractError(f"topic {key!r} needs parameter {name!r}")
            check_level(value, name)
            levels.append(value)
        return "/".join(levels)

    def subscription(self, key: str, *, agent: str | None = None) -> str:
        """The subscription filter for `key` (free parameters become `+`)."""
        e = self.entry(key)
        levels = []
        for lvl in e.levels:
            m = _PARAM.match(lvl)
            if m and m.group(1) == "agent" and agent is not None:
                levels.append(agent)
            elif m:
                levels.append("+")
            else:
                levels.append(lvl)
        return "/".join(levels)

    def match(self, topic: str) -> tuple[TopicEntry, dict[str, str]] | None:
        """The entry a concrete topic belongs to, with its parameters; None when undeclared."""
        cache = self._match_cache
        if topic not in cache:
            if len(cache) > 10_000:
                cache.clear()
            cache[topic] = self._match_uncached(topic)
        found = cache[topic]
        return (found[0], dict(found[1])) if found else None

    @functools.cached_property
    def _match_cache(self) -> dict[str, tuple[TopicEntry, tuple[tuple[str, str], ...]] | None]:
        return {}

    def _match_uncached(self, topic: str) -> tuple[TopicEntry, tuple[tuple[str, str], ...]] | None:
        levels = topic.split("/")
        literal = self._literals.get(topic)
        if literal is not None:
            return literal, ()
        for e, pattern in self._patterns:
            if len(pattern) != len(levels):
                continue
            params: list[tuple[str, str]] = []
            for p, actual in zip(pattern, levels, strict=True):
                if p.startswith("{"):
                    params.append((p[1:-1], actual))
                elif p != actual:
                    break
            else:
                return e, tuple(params)
        return None

    @functools.cached_property
    def _literals(self) -> dict[str, TopicEntry]:
        # Literal topics win over patterns (stats/character/get before stats/character/{user_id}).
        return {e.topic: e for e in self.topics.values() if not e.params}

    @functools.cached_property
    def _patterns(self) -> list[tuple[TopicEntry, list[str]]]:
        return [(e, e.levels) for e in self.topics.values() if e.params]

    def is_reply_topic(self, topic: str) -> bool:
        """Whether `topic` is a response topic of the contract (its `reply` entry, if any)."""
        found = self.match(topic)
        return found is not None and found[0].kind == "reply"

    def resolve(self, principal: str, key: str, **params: str) -> tuple[TopicEntry, str]:
        """The entry of `key` and the concrete topic `principal` publishes it on (an `{agent}`
        level is the principal itself); ContractError when the contract does not let it. The
        one publish check of the runtime: a publish by key, an emitted event or state, a
        request, a request with a receipt."""
        entry = self.entry(key)
        if principal not in entry.publishers:
            raise may_not_publish(principal, key, entry.topic)
        agent = params.pop("agent", principal)  # another agent's {agent} topic: refused below
        topic = self.topic(key, agent=agent, **params)
        self.check_publish(principal, key, topic)
        return entry, topic

    def check_publish(self, principal: str, key: str, topic: str) -> None:
        """ContractError unless `principal` may publish on the concrete `topic`: what
        `resolve` checks last, and all that is left to check when a topic resolved earlier
        (an outbox record, a retained state) goes out. E.g. a user called "get":
        stats/character/get is the request topic, not a character state."""
        if not self.publisher_allowed(principal, topic):
            raise may_not_publish(principal, key, topic)

    def publisher_allowed(self, principal: str, topic: str) -> bool:
        """Whether the entry `topic` belongs to names `principal` a publisher (and an `{agent}`
        level in it is `principal`)."""
        found = self.match(topic)
        if found is None:
            return False
        e, params = found
        if principal not in e.publishers:
            return False
        return "agent" not in params or params["agent"] == principal

    def with_first_level(self, old: str, new: str) -> Contract:
        """This contract with every topic whose first level is `old` moved under `new` (e.g.
        another Home Assistant discovery prefix)."""
        if new == old:
            return self
        check_level(new, "topic prefix")
        topics: dict[str, TopicEntry] = {}
        for key, e in self.topics.items():
            first, _, rest = e.topic.partition("/")
            topic = f"{new}/{rest}" if first == old else e.topic
            topics[key] = msgspec.structs.replace(e, topic=topic)
        moved = Contract(meta=self.meta, topics=topics)
        moved._bind(self.schemas)
        return moved

    def for_agent(self, agent: str) -> Mapping[str, TopicEntry]:
        return {
            k: e for k, e in self.topics.items() if agent in e.publishers or agent in e.subscribers
        }


def may_not_publish(principal: str, key: str, topic: str) -> ContractError:
    """The one refusal of a publish the contract does not allow."""
    return ContractError(f"{principal} may not publish {key!r} on {topic!r}")


def check_level(value: str, name: str = "value") -> None:
    """Refuse anything that cannot be one plain topic level (wildcards, '/', NUL, '$', empty)."""
    if not _SAFE_LEVEL.match(value):
        raise ContractError(
            f"{name} {value!r} cannot be a topic level: use 1-128 of [A-Za-z0-9_.:-]"
        )
