"""Dedup keys from the contract: the `dedup` expression of a topics.toml entry, parsed once, and
the inbox key it gives a payload.

The grammar (documented for users in the header of topics.toml):

    dedup       = "none" | "keyless" | [namespace ":"] alternative ("|" alternative)*
    alternative = part ("+" part)*
    part        = field ["?"] | label "{" field "}" ["?"]

- `none` (or no `dedup` at all): nothing is claimed, `NO_CLAIM`: a query, or a request whose
  handler makes a repeat harmless itself.
- `keyless`: every message gets the key the runtime derives from its correlation data and
  canonical payload, within the keyless window (`KEYLESS`, see `mesh.claims.derived_key`).
- alternatives: the first whose fields are all present (not null, not empty) is the key: the
  namespace and `:`, then the parts' values joined by `:`; when none is present, `KEYLESS`.
  A part marked `?` is optional: left out when null, empty or 0 (and never makes its
  alternative absent). A `label{field}` part writes the label before the value.

The namespace and the labelled optional part exist because the keys made before the contract
built them (and held in existing databases) look so: `activity:<id>` and
`oura:<user>:<date>` with `:rev<n>` only from the first revision on.

Hand-written rather than a library: it is three regular expressions over a one-line grammar,
and the parsed rule is a few tuples the hot path walks without allocation beyond the key.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec

from mesh.errors import ContractError

_NAMESPACE = re.compile(r"^\s*([a-z][a-z0-9_-]*)\s*:(.*)$", re.S)
_PART = re.compile(
    r"^(?:(?P<label>[a-z0-9_-]*)\{(?P<braced>[a-z_][a-z0-9_]*)\}|(?P<field>[a-z_][a-z0-9_]*))"
    r"(?P<optional>\?)?$"
)


class Keyless(enum.Enum):
    """A message that names no key of its own: the runtime derives one from its correlation
    data and canonical payload, valid within the keyless window (`mesh.claims.derived_key`)."""

    KEYLESS = "keyless"


KEYLESS = Keyless.KEYLESS


class Part(msgspec.Struct, frozen=True):
    """One field of an alternative: its value (after `label`) is one segment of the key."""

    field: str
    label: str = ""
    optional: bool = False


class DedupRule(msgspec.Struct, frozen=True):
    """A parsed `dedup` expression: how a route's messages are recognised when they come again."""

    text: str
    claims: bool = True  # False: NO_CLAIM, nothing is claimed
    namespace: str = ""
    alternatives: tuple[tuple[Part, ...], ...] = ()

    @property
    def fields(self) -> list[str]:
        """Every payload field the rule reads, in order of first mention."""
        return list(dict.fromkeys(p.field for alt in self.alternatives for p in alt))

    def key(self, payload: Any) -> str | Keyless:
        """The inbox key of `payload`: the first present alternative, else `KEYLESS`."""
        if not self.claims:
            raise ContractError(f"dedup {self.text!r} claims nothing: there is no key to build")
        for alt in self.alternatives:
            segments = _render(alt, payload)
            if segments is not None:
                head = [self.namespace] if self.namespace else []
                return ":".join(head + segments)
        return KEYLESS


def _render(alt: tuple[Part, ...], payload: Any) -> list[str] | None:
    """The key segments of one alternative; None when a required field is absent."""
    out: list[str] = []
    for part in alt:
        value = getattr(payload, part.field, None)
        if part.optional:
            if value:  # left out when null, empty or 0
                out.append(f"{part.label}{value}")
        elif value is None or value == "":
            return None
        else:
            out.append(f"{part.label}{value}")
    return out


NO_CLAIM = DedupRule("none", claims=False)
ALWAYS_KEYLESS = DedupRule("keyless")


def parse_dedup(text: str | None) -> DedupRule:
    """The rule of a `dedup` expression (None, the field left out, is `NO_CLAIM`)."""
    if text is None or text.strip() == "none":
        return NO_CLAIM
    if text.strip() == "keyless":
        return ALWAYS_KEYLESS
    namespace, rest = "", text
    m = _NAMESPACE.match(text)
    if m:
        namespace, rest = m.group(1), m.group(2)
    alternatives = tuple(_alternative(alt, text) for alt in rest.split("|"))
    return DedupRule(text, namespace=namespace, alternatives=alternatives)


def _alternative(alt: str, text: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    for raw in alt.split("+"):
        m = _PART.match(raw.strip())
        if m is None:
            raise ContractError(
                f"dedup {text!r}: {raw.strip()!r} is no payload field (expected `field`, "
                "`field?` or `label{field}?`, alternatives joined by `|`, fields by `+`)"
            )
        parts.append(
            Part(
                field=m.group("field") or m.group("braced"),
                label=m.group("label") or "",
                optional=bool(m.group("optional")),
            )
        )
    if all(p.optional for p in parts):
        raise ContractError(f"dedup {text!r}: the alternative {alt.strip()!r} needs a field not ?")
    return tuple(parts)


def dedup_problems(rule: DedupRule, schema: Any) -> list[str]:
    """What is wrong with `rule` for payloads of `schema` (fields it does not have)."""
    if not rule.fields:
        return []
    if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
        return [f"dedup {rule.text!r} names fields but the payload has none"]
    known = {f.name for f in msgspec.structs.fields(schema)}
    name = getattr(schema, "__name__", str(schema))
    return [
        f"dedup {rule.text!r}: {name} has no field {field!r}"
        for field in rule.fields
        if field not in known
    ]
