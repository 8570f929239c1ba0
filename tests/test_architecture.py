"""The layout is the architecture: packages in the order data flows, every import pointing down, no cycles.

Read from the code's own import statements (module level and inside functions alike), and checked by importing
the torch-free and Ray-free packages in a clean interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "neuronxa_ray"

# Floors, lowest first: a package may import only packages on lower floors (and itself).
FLOORS = [
    {"errors", "methods"},
    {"corpus", "model"},
    {"config"},
    {"lake"},
    {"planning", "compute", "query", "downstream"},
    {"worker"},
    {"execution", "report"},
    {"cli"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _unit(path: Path) -> str:
    """The top-level room a file belongs to: a package (model, lake, ...) or a module (errors, methods)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "neuronxa_ray":
                out += [(f"neuronxa_ray.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def _sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "data" not in p.relative_to(PACKAGE).parts]


def test_every_room_has_a_floor():
    rooms = {_unit(p) for p in _sources()} - {"__init__"}
    assert rooms == set(FLOOR), (
        f"rooms without a floor: {rooms - set(FLOOR)}; floors without a room: {set(FLOOR) - rooms}"
    )


def test_imports_point_down():
    wrong = []
    for path in _sources():
        here = _unit(path)
        if here == "__init__":
            continue
        for name, line in _imports(path):
            if not name.startswith("neuronxa_ray.") or name == "neuronxa_ray.views":
                continue
            there = name.split(".")[1]
            if there != here and there in FLOOR and FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} {here} (floor {FLOOR[here]}) -> {name}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize(
    ("rooms", "forbidden"),
    [
        (("config", "corpus", "planning", "model/spec.py", "model/resolve.py"), ("torch", "ray")),
        (("compute",), ("ray", "neuronxa_ray.lake", "duckdb")),
        (("lake", "query", "downstream", "report"), ("torch", "ray", "transformers")),
    ],
)
def test_rooms_keep_out_what_they_must_not_touch(rooms, forbidden):
    wrong = []
    for room in rooms:
        target = PACKAGE / room
        files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
        for path in files:
            for name, line in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert wrong == [], "\n".join(wrong)


def test_only_execution_imports_ray():
    users = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in _sources()
        if any(n == "ray" or n.startswith("ray.") for n, _ in _imports(p))
    )
    assert users and all(u.startswith("neuronxa_ray/execution/") for u in users), users


def test_no_import_cycles_between_modules():
    """Module-level imports (those that run on import) form no cycle."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in tree.body:  # module level only: imports inside functions run later
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neuronxa_ray"):
                deps |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("neuronxa_ray")}
        graph[name] = deps
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    # a package's __init__ importing its own modules is not a cycle: drop child -> parent-package edges
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    "module",
    ["neuronxa_ray.config", "neuronxa_ray.planning", "neuronxa_ray.corpus.readers", "neuronxa_ray.execution.policy"],
)
def test_light_packages_import_without_torch_or_ray(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loads {out.strip()}"


def test_every_package_says_what_it_owns():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name == "data":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80 and "import" in doc.lower(), f"{init}: say what it owns and what it may import"
