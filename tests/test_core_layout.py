"""The client core's layout: no import cycle, and one meaning of "a client's own thread"."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import fluentclient
from fluentclient import BufferedClient
from fluentclient._lifecycle import own_thread

from .waiting import wait_until

PACKAGE = Path(fluentclient.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every import of the package's own modules, wherever it is made: at the top, inside
    a function or under ``if TYPE_CHECKING`` (each of those still closes a cycle).
    Packages themselves (``__init__``) are left out: they import what they re-export."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")
               if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                for candidate in (f"{target}.{alias.name}", target):
                    if candidate in modules and candidate != name:
                        graph[name].add(candidate)
                        break
    return graph


def cycles_through(graph: dict[str, set[str]], start: str) -> list[list[str]]:
    """The import paths that lead from ``start`` back to it."""
    found: list[list[str]] = []
    seen: set[str] = set()
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                found.append(path + [start])
            elif nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return found


def core_cycles(root: Path) -> list[list[str]]:
    graph = import_graph(root)
    core = [m for m in graph if m.rpartition(".")[2] in (
        "client", "_exit", "_process", "_sigterm", "_lifecycle", "_reader", "_admission",
        "_reporting", "_buffer")]
    return [c for m in core for c in cycles_through(graph, m)]


def test_no_import_cycle_runs_through_the_client_core():
    assert core_cycles(PACKAGE) == []


def test_a_helper_thread_named_like_ours_is_not_a_clients_own(fluent_server):
    seen: dict[str, bool] = {}

    def on_error(err, msg):
        seen.setdefault("reader", own_thread())

    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            on_error=on_error)
    try:
        # Cannot be packed: the reader drops it, and reports it on its own thread.
        client.post("layout.bad", {"value": object()})
        assert wait_until(lambda: "reader" in seen)
        assert seen["reader"] is True
        helper = threading.Thread(target=lambda: seen.setdefault("helper", own_thread()),
                                  name="fluentclient-aio-helper")
        helper.start()
        helper.join(20)
        assert seen["helper"] is False
        assert own_thread() is False
    finally:
        client.shutdown(10)
