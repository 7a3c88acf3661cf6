"""The architecture, checked: layers import only downwards, no import cycles (imports for type
checking only count too), agents use only the runtime's public API, the agent list exists
once, functions stay short, and gmqtt's private attributes are used in its adapter only."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import mesh
from lifeops_contract import contract
from lifeops_mesh import registry

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"  # the whiteboard: layers and runtime modules
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
# The one module that may use gmqtt's private attributes, and the test that checks them.
GMQTT_ADAPTER = {"mesh/transport/gmqtt_adapter.py", "tests/mesh/test_gmqtt_adapter.py"}
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


def documented_layers() -> dict[str, set[str]]:
    """The allowed-import table of docs/architecture.md (between the `layers` markers)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    begin, end = "<!-- layers:begin -->", "<!-- layers:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"{ARCHITECTURE}: one {begin} ... {end}"
    table: dict[str, set[str]] = {}
    for line in text.split(begin)[1].split(end)[0].splitlines():
        row = re.fullmatch(r"\| `(\w+)` \| (.*) \|", line.strip())
        if row is None:
            continue
        assert row.group(1) not in table, f"{row.group(1)} has two rows"
        table[row.group(1)] = set(re.findall(r"`(\w+)`", row.group(2)))
    return table


def test_the_architecture_page_is_the_enforced_layering() -> None:
    """docs/architecture.md's table of who may import whom is exactly `ALLOWED`, for exactly the
    checked packages: change one, change the other."""
    documented = documented_layers()
    assert list(documented) == PACKAGES, (list(documented), PACKAGES)
    wrong = [
        f"{pkg}: page says {sorted(documented[pkg])}, test_layout enforces {sorted(ALLOWED[pkg])}"
        for pkg in PACKAGES
        if documented[pkg] != ALLOWED[pkg]
    ]
    assert not wrong, "\n".join(wrong)


def test_every_runtime_module_has_its_line_on_the_architecture_page() -> None:
    """Each module of mesh/ has a `- `mesh/...py`: concern` line in docs/architecture.md, and
    every such line names a module that exists."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    documented = set(re.findall(r"^- `(mesh/[\w/]+\.py)`: \S", text, re.MULTILINE))
    actual = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mesh").rglob("*.py")}
    missing = sorted(actual - documented)
    stale = sorted(documented - actual)
    assert not missing, f"add a line to {ARCHITECTURE.name} for: " + ", ".join(missing)
    assert not stale, f"{ARCHITECTURE.name} names modules that do not exist: " + ", ".join(stale)


def test_every_public_class_and_function_has_a_docstring() -> None:
    """Each class, function and module exported in `mesh.__all__` says what it is: its own
    docstring (a class does not count its base's, nor the signature a dataclass makes up)."""
    missing = []
    for name in mesh.__all__:
        obj = getattr(mesh, name)
        if inspect.isclass(obj):
            doc = obj.__dict__.get("__doc__")
        elif inspect.isfunction(obj) or inspect.ismodule(obj):
            doc = obj.__doc__
        else:
            continue  # constants and type aliases hold no docstring of their own
        if not (isinstance(doc, str) and doc.strip()) or doc.startswith(f"{name}("):
            missing.append(f"{name} ({getattr(obj, '__module__', obj.__name__)})")
    assert not missing, "no docstring: " + ", ".join(missing)


def gmqtt_private_names() -> set[str]:
    """Every private name gmqtt's own source uses (attributes, methods, module globals)."""
    spec = importlib.util.find_spec("gmqtt")
    assert spec is not None and spec.origin is not None
    names: set[str] = set()
    for path in Path(spec.origin).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def private_gmqtt_uses(tree: ast.AST, private: set[str]) -> Iterator[ast.AST]:
    """`x._name` and getattr/setattr/hasattr(x, "_name") with a name gmqtt uses privately, on
    anything but a class's own `self`/`cls` (in a subclass of a gmqtt class, on those too)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    from_gmqtt = {"gmqtt"} | {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gmqtt"
        for a in node.names
    }

    def own(base: ast.AST) -> bool:
        if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
            return False
        node: ast.AST = base
        while node in parents and not isinstance(node, ast.ClassDef):
            node = parents[node]
        bases = node.bases if isinstance(node, ast.ClassDef) else []
        return not any(ast.unparse(b).split(".")[0] in from_gmqtt for b in bases)

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private and not own(node.value):
            yield node
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in GETTERS and node.args[1:]:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in private and not own(node.args[0]):
                yield node


GETTERS = ("getattr", "setattr", "hasattr", "delattr")


def test_gmqtt_private_names_only_in_its_adapter() -> None:
    """gmqtt's private attributes are used in mesh/transport/gmqtt_adapter.py (checked against
    the installed gmqtt by tests/mesh/test_gmqtt_adapter.py) and nowhere else: not in the
    runtime, the agents, the tools, the tests, the benchmarks or the scripts."""
    private = gmqtt_private_names()
    assert {"_package_handler", "_connection"} <= private, "gmqtt's source was not read"
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        parts = path.relative_to(ROOT).parts
        if rel in GMQTT_ADAPTER or any(p.startswith(".") or p == "build" for p in parts):
            continue
        for node in private_gmqtt_uses(ast.parse(path.read_text()), private):
            wrong.append(f"{rel}:{getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    assert not wrong, "private gmqtt names outside its adapter:\n" + "\n".join(wrong)


def test_the_gmqtt_check_sees_each_form_of_access() -> None:
    """The check above is not blind: attribute access on any object, getattr/setattr with the
    name, and `self` in a subclass of a gmqtt class count; a class's own `self._x` does not."""
    snippet = """
from gmqtt.storage import PersistentStorage
class Mine:
    def f(self, client):
        self._connection = client._connection
        return getattr(client._package_handler, "_connack_properties")
class Stored(PersistentStorage):
    def g(self):
        return self._queue
"""
    found = [ast.unparse(n) for n in private_gmqtt_uses(ast.parse(snippet), gmqtt_private_names())]
    assert found == [
        "client._connection",
        "getattr(client._package_handler, '_connack_properties')",
        "self._queue",
        "client._package_handler",
    ]
