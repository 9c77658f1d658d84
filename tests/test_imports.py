"""
The package's import graph has no cycle.

Why a test: a cycle "broken" by a lazy import inside a function still
couples the two modules both ways, makes import order matter, and hides the
layering (pure translation below I/O, the gate and the upstream side below
the pipeline). Lazy imports count here like the others.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

from twisted.trial.unittest import SynchronousTestCase

import qwen_twist

PACKAGE_DIR = os.path.dirname(qwen_twist.__file__)


def module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> Dict[str, Set[str]]:
    """
    Module -> the C{qwen_twist} modules it imports (anywhere in its body).
    """
    modules = {}
    for directory, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                modules[module_name(path)] = path
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        targets: Set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                for alias in node.names:
                    candidate = "%s.%s" % (base, alias.name)
                    targets.add(candidate if candidate in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """
    One cycle per strongly connected component of more than one module
    (Tarjan's algorithm).
    """
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportGraphTests(SynchronousTestCase):
    """
    The import graph of C{qwen_twist}.
    """

    def test_no_cycles(self) -> None:
        """
        No module imports, directly or through others, a module that
        imports it back.
        """
        self.assertEqual(cycles(import_graph()), [])

    def test_finds_a_cycle(self) -> None:
        """
        The checker itself sees a cycle when there is one.
        """
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}),
                         [["a", "b", "c"]])

    def test_sees_the_package(self) -> None:
        """
        The graph has the modules and edges it should (a checker reading
        nothing would find no cycle either).
        """
        graph = import_graph()
        self.assertIn("qwen_twist.tap", graph)
        self.assertIn("qwen_twist.pipeline", graph["qwen_twist.tap"])
        self.assertIn("qwen_twist.gate.keys", graph["qwen_twist.gate.keyfile"])
