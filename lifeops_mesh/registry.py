"""The agents this installation can run: the `lifeops_mesh.agents` entry point group.

Each entry point names an `AgentBuilder` (`stats = "stats_agent.agent:build"`): a third-party
agent installs like ours, by declaring one in its own package metadata. The list of agents
exists there and nowhere else; the application imports no agent module directly.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from mesh import AgentApp, AgentBuilder, ConfigError, Settings

GROUP = "lifeops_mesh.agents"


@functools.cache
def builders() -> dict[str, AgentBuilder]:
    """Agent name -> builder, for every installed agent (sorted by name)."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not found:
        raise ConfigError(
            f"no agents installed (entry point group {GROUP!r} is empty): "
            "install the package, e.g. pip install lifeops-mesh"
        )
    return {name: found[name].load() for name in sorted(found)}


def names() -> list[str]:
    return list(builders())


def builder(name: str) -> AgentBuilder:
    known = builders()
    if name not in known:
        raise ConfigError(f"unknown agent {name!r}: choose one of {', '.join(known)}")
    return known[name]


def build(settings: Settings) -> AgentApp:
    """The app of the agent `settings.agent`."""
    return builder(settings.agent)(settings)


def start_order(apps: list[AgentApp]) -> list[AgentApp]:
    """`apps` ordered so that every agent starts after those it depends on (when present)."""
    by_name = {a.name: a for a in apps}
    ordered: list[AgentApp] = []
    seen: set[str] = set()

    def visit(app: AgentApp, path: tuple[str, ...]) -> None:
        if app.name in seen:
            return
        if app.name in path:
            raise ConfigError(f"agents depend on each other in a circle: {' -> '.join(path)}")
        for dep in app.depends_on:
            if dep in by_name:
                visit(by_name[dep], (*path, app.name))
        seen.add(app.name)
        ordered.append(app)

    for app in apps:
        visit(app, ())
    return ordered
