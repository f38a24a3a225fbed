"""The package's layout: module sizes and import cycles, read from the source with ast.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: such an
import only hides a cycle, it does not break it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fluentclient

PACKAGE = Path(fluentclient.__file__).parent
MAX_MODULE_LINES = 600
# Modules still waiting for their split (issue 20); none may join them.
OVERSIZED: set[str] = set()
# Cycles still waiting to be broken (issue 20): each is named by its modules, sorted.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_names() -> dict[str, Path]:
    """Each module's dotted name under the package ("" for the package) and its source;
    a compiled module is read from its stub."""
    names = {}
    stubs = [p for p in PACKAGE.rglob("*.pyi") if not p.with_suffix(".py").exists()]
    for path in sorted([*PACKAGE.rglob("*.py"), *stubs]):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, wherever in it the import is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("fluentclient"):
                base_name = node.module
            else:
                continue
            # "from . import x" imports the module x; "from .m import y" the module m.
            base_name = base_name.removeprefix("fluentclient").strip(".")
            targets = []
            for alias in node.names:
                module = f"{base_name}.{alias.name}".strip(".")
                targets.append(module if module in known else base_name)
        else:
            continue
        for target in targets:
            target = target.removeprefix("fluentclient").strip(".")
            if target in known and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    known = set(names)
    return {name: imported(name, path, known) for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_is_over_600_lines():
    over = {
        name: lines for name, path in module_names().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert set(over) <= OVERSIZED, over


def test_no_import_cycle_but_those_awaiting_their_fix():
    found = set(cycles(import_graph()))
    assert found <= KNOWN_CYCLES, sorted(sorted(c) for c in found - KNOWN_CYCLES)


def test_the_embedded_server_and_the_decoder_import_nothing_of_the_client():
    """The server stands on the protocol's decoding alone: a client's machinery (buffer,
    reader, writer, connections) stays out of its imports."""
    graph = import_graph()
    allowed = {"_decoding", "_transport._handshake", "_words", "message", "errors"}
    for name, targets in graph.items():
        if name == "server" or name.startswith("server.") or name == "_decoding":
            outside = {t for t in targets if not t.startswith("server")}
            assert outside <= allowed, (name, outside - allowed)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function_or_for_type_checking(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from .a import A\n")
    known = {"a", "b"}
    graph = {"a": imported("a", a, known), "b": imported("b", b, known)}
    assert cycles(graph) == [frozenset({"a", "b"})]


def test_forward_server_is_exported_from_the_package():
    from fluentclient.server import ForwardServer

    assert "ForwardServer" in fluentclient.__all__
    assert fluentclient.ForwardServer is ForwardServer


MAX_CLASS_LINES = 400
# Classes excused from the limit: none, and none may join.
OVERSIZED_CLASSES: set[str] = set()


def class_sizes(path: Path) -> dict[str, int]:
    """Each class of the module (nested ones too) and its lines, decorators included."""
    sizes = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            sizes[node.name] = node.end_lineno - first + 1
    return sizes


def test_no_class_is_over_400_lines():
    over = {
        f"{module}.{name}": lines
        for module, path in module_names().items()
        for name, lines in class_sizes(path).items()
        if lines > MAX_CLASS_LINES and name not in OVERSIZED_CLASSES
    }
    assert not over, over


def test_the_class_counter_counts_a_class_to_its_last_line(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("@dataclass\nclass A:\n    x: int\n\n    def f(self):\n        pass\n")
    assert class_sizes(module) == {"A": 6}
