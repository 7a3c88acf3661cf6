"""The architecture, checked: layers import only downwards, no import cycles (imports for type
checking only count too), agents use only the runtime's public API, the agent list exists
once, and functions stay short."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import mesh
from lifeops_contract import contract
from lifeops_mesh import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "mesh",
    "lifeops_contract",
    "lifeops_oura",
    "stats_agent",
    "lifeops_agent",
    "ha_bridge",
    "lifeops_mesh",
]
AGENTS = ["stats_agent", "lifeops_agent", "ha_bridge"]
# Who may import whom (beyond itself). The runtime sits at the bottom and knows nobody.
ALLOWED = {
    "mesh": set(),
    "lifeops_contract": {"mesh"},
    "lifeops_oura": {"mesh", "lifeops_contract"},
    "stats_agent": {"mesh", "lifeops_contract"},
    "lifeops_agent": {"mesh", "lifeops_contract", "lifeops_oura"},
    "ha_bridge": {"mesh", "lifeops_contract"},
    "lifeops_mesh": {"mesh", "lifeops_contract", "lifeops_oura"},
}
# Functions longer than MAX_LINES, each with the reason it is one piece.
MAX_LINES = 60
LONG_ALLOWED: dict[str, str] = {}


def modules() -> Iterator[tuple[str, Path]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def imports_of(name: str, path: Path) -> set[str]:
    """Modules `name` imports: function-level ones too, and those under `if TYPE_CHECKING:` (a
    cycle for the type checker only is still two modules that need each other)."""
    return _imports(name, path.name == "__init__.py", path.read_text())


def _imports(name: str, is_package: bool, source: str) -> set[str]:
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for a in node.names:
                full = f"{base}.{a.name}"
                found.add(full if _is_module(full) else base)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def test_layers_import_only_downwards() -> None:
    """The runtime imports no agent and no application module; agents import no other agent;
    nothing imports the application but itself."""
    wrong = []
    for name, path in modules():
        top = name.split(".")[0]
        for imported in imports_of(name, path):
            other = imported.split(".")[0]
            if other in PACKAGES and other != top and other not in ALLOWED[top]:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """No module imports itself through others (a package's __init__ importing its own
    submodules is how packages work, not a cycle)."""
    known = dict(modules())
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        graph[name] = {m for m in imports_of(name, path) if m in known and m not in ancestors}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_for_type_checking_only_count() -> None:
    """The cycle check sees an import under `if TYPE_CHECKING:` (the one way back up that
    mesh.health used to take to mesh.agent)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mesh.agent import Agent\n"
        "    from mesh import presence\n"
    )
    found = _imports("mesh.health", False, source)
    assert {"mesh.agent", "mesh.presence"} <= found


def test_public_api_is_what_mesh_exports() -> None:
    """`mesh.__all__` names real objects, sorted; agents import only those names, only from
    `mesh` itself (never a runtime submodule)."""
    assert len(set(mesh.__all__)) == len(mesh.__all__)
    for name in mesh.__all__:
        assert hasattr(mesh, name), name
    wrong = []
    for name, path in modules():
        if name.split(".")[0] not in AGENTS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mesh"):
                if node.module != "mesh":
                    wrong.append(f"{name}: from {node.module} import ...")
                wrong += [f"{name}: {a.name}" for a in node.names if a.name not in mesh.__all__]
            elif isinstance(node, ast.Import):
                wrong += [f"{name}: import {a.name}" for a in node.names if a.name == "mesh"]
    assert not wrong, "\n".join(wrong)


def test_the_agent_list_exists_once() -> None:
    """The installed agents are the entry points; they are exactly the contract's agents, and
    no module keeps a list of agent names of its own."""
    assert sorted(registry.names()) == sorted(contract().agents)
    for name, path in modules():
        text = path.read_text()
        for a, b, c in (("stats", "lifeops", "ha_bridge"), ("lifeops", "stats", "ha_bridge")):
            assert f'"{a}", "{b}", "{c}"' not in text, f"{name} lists the agents"


def test_functions_stay_short() -> None:
    """No function over ~60 lines without a stated reason."""
    long = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                where = f"{name}.{node.name}"
                if size > MAX_LINES and where not in LONG_ALLOWED:
                    long.append(f"{where}: {size} lines")
    assert not long, "\n".join(long)
