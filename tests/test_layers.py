"""The packages import one way: helpers at the bottom, components above them, the applications on top.

A package may import only packages of a lower layer, and modules of its own package; nothing in a layer imports
a layer above it, so there is no import cycle between packages. Within a package, modules import each other
without cycles too. Both are checked on the source (every import statement, module-level or inside a function),
so an upward import hidden in a function body is caught as well.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

import pytest

PACKAGE = "monai_rd"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# bottom to top; a package may import the packages of earlier layers only
LAYERS: list[set[str]] = [
    {"errors"},
    {"utils"},
    {"data"},
    {"datasets", "transforms"},
    {"networks"},
    {"losses"},
    {"handlers"},
    {"engines"},
    {"methods"},
    {"bundle"},
    {"compare", "export", "make_datalist"},
    {"label"},
]
# the package's own __init__ may import the layers it re-exports
TOP_INIT = ""


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"monai_rd.{package} is in no layer of tests/test_layers.py: add it to LAYERS.")


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(path: str, module: str) -> set[str]:
    """Every monai_rd module ``path`` imports (absolute, relative, in functions too)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == PACKAGE:
                found.add(name)
                # ``from monai_rd.x import y`` may name a module y
                found |= {f"{name}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = defaultdict(set)
    for module, path in modules.items():
        for name in _imports(path, module):
            # the longest module prefix of the imported name
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                graph[module].add(".".join(parts))
    return graph


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else TOP_INIT


def test_no_package_imports_a_layer_above_it():
    """Catches an upward import, e.g. a handler importing monai_rd.bundle or a loss importing monai_rd.methods."""
    upward = []
    for module, targets in _graph().items():
        src = _package(module)
        if src == TOP_INIT:
            continue
        for target in targets:
            dst = _package(target)
            if dst not in (TOP_INIT, src) and _layer(dst) >= _layer(src):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers (see LAYERS):\n" + "\n".join(sorted(upward))


def test_no_module_import_cycle():
    """Catches a cycle between modules (within a package too): a -> b -> ... -> a."""
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own modules is how a package re-exports, not a cycle
            if nxt == PACKAGE or (node.startswith(nxt + ".") and _is_package(nxt)):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _is_package(module: str) -> bool:
    return _modules()[module].endswith("__init__.py")


@pytest.mark.parametrize("bad", ["monai_rd.bundle", "monai_rd.methods"])
def test_the_check_sees_an_upward_import_in_a_function_body(tmp_path, bad):
    """Catches a checker that reads only module-level imports (the cycles this project had were in functions)."""
    path = tmp_path / "x.py"
    path.write_text(f"def f():\n    from {bad} import something\n")
    assert bad in _imports(str(path), "monai_rd.handlers.x")
