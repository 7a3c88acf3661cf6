"""MQTT topic filters: matching, covering, shared-subscription names."""

from __future__ import annotations

SHARE_PREFIX = "$share/"


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` as a broker applies it (`+`, `#`; a filter that
    does not start with `$` never matches a `$SYS`-style topic through a wildcard)."""
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    f, t = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def covers(wide: str, narrow: str) -> bool:
    """Whether every topic matching filter `narrow` also matches filter `wide`."""
    if wide.startswith(SHARE_PREFIX) or narrow.startswith(SHARE_PREFIX):
        return False
    w, n = wide.split("/"), narrow.split("/")
    for i, level in enumerate(w):
        if level == "#":
            return True
        if i >= len(n) or (level != "+" and level != n[i]) or (level != "+" and n[i] in "+#"):
            return False
        if level == "+" and n[i] == "#":
            return False
    return len(w) == len(n)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """(`group`, filter) of `$share/group/filter`; (None, filter) for a plain filter."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, _, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return group, rest


def shared(group: str | None, topic_filter: str) -> str:
    """The filter to subscribe to: `$share/<group>/<filter>`, or the filter when no group."""
    return f"{SHARE_PREFIX}{group}/{topic_filter}" if group else topic_filter
