"""The import structure of src/memable, read from its syntax trees (nothing is imported).

Three rules (STYLE.md, "Shape of the package" and "Where state lives"):

1. No import cycles among memable's modules, counting the imports that run: at module
   level and inside functions, but not under ``if TYPE_CHECKING:``.
2. Counting the ``TYPE_CHECKING`` imports as well, the only cycle is the annotation-only
   ``_workflow -> _context`` edge (a workflow's function takes a ``Context``).
3. No module reads an underscore attribute of another module's objects: ``x._name`` where
   ``x`` is not ``self``/``cls`` nor a name the module itself defines at top level, and
   ``from m import _name`` of a private name (not a module) from another module.

An import of ``memable.storage._records`` also runs ``memable/storage/__init__.py`` first,
so it counts as an edge to ``memable.storage`` too (unless the importer is inside that
package). The root ``memable/__init__.py`` runs before any memable module, and it
imports the whole façade; edges into it are counted only when written out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs

# Allowed exceptions. The refactor of the core emptied these lists; keep them empty. A new
# violation fails the test, and so does an entry that no longer occurs, so the lists can
# only get shorter.
# Cycles are written starting at their alphabetically first module;
# private accesses as "module: expression" (no line numbers, so that edits elsewhere in a
# file do not move them).
ALLOWED_RUNTIME_CYCLES: frozenset[tuple[str, ...]] = frozenset()
# Through a TYPE_CHECKING import of a module that imports this one at runtime.
ALLOWED_TYPING_CYCLES: frozenset[tuple[str, ...]] = frozenset()
# The one read left is inside _engine.py itself: kernel_of() hands memable.testing the
# engine's test hooks, so that no other module reads the engine's private attributes.
ALLOWED_PRIVATE_ACCESS: frozenset[str] = frozenset({"memable._engine: engine._kernel"})

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "memable"
ROOT = "memable"
# The one cycle the design allows: a workflow's function is annotated with Context.
ANNOTATION_ONLY_EDGE = ("memable._workflow", "memable._context")
# Underscore names that are documented public API of the standard library.
PUBLIC_UNDERSCORE_NAMES = frozenset({"os._exit"})

Kind = Literal["module", "function", "typing"]


@attrs.frozen
class Edge:
    source: str
    target: str
    kind: Kind  # at module level, inside a function, or under TYPE_CHECKING
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {
    name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()
}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    """Every import statement of *tree*, with where it runs."""

    def visit(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, "typing")
            for child in node.orelse:
                yield from visit(child, kind)
        else:
            inner: Kind = (
                "function"
                if kind == "module"
                and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                else kind
            )
            for inside in ast.iter_child_nodes(node):
                yield from visit(inside, inner)

    yield from visit(tree, "module")


def package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of what ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = package_of(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The memable modules an import statement runs (not counting the root package)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        source = resolve(module, node)
        names = [source]
        names += [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
    for name in names:
        if name not in MODULES:
            continue
        if name != ROOT or (isinstance(node, ast.ImportFrom) and node.level == 0):
            yield name
        # Importing a.b.c runs a/b/__init__.py first: an edge, unless the importer is
        # itself inside a.b (then that package is already being imported).
        parent = name.rpartition(".")[0]
        while parent and parent != ROOT:
            if not module.startswith(parent + ".") and module != parent:
                yield parent
            parent = parent.rpartition(".")[0]


def edges() -> list[Edge]:
    found: set[Edge] = set()
    for module, tree in TREES.items():
        for node, kind in imports(tree):
            for target in targets(module, node):
                if target != module:
                    found.add(Edge(module, target, kind, node.lineno))
    return sorted(found, key=lambda e: (e.source, e.target, e.kind, e.line))


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle of *graph*, each starting at its smallest module."""
    found: set[tuple[str, ...]] = set()
    nodes = sorted(graph)
    for index, start in enumerate(nodes):
        allowed = set(nodes[index:])  # cycles through smaller nodes were found already

        def walk(path: list[str], start: str = start, allowed: set[str] = allowed) -> None:
            for nxt in sorted(graph.get(path[-1], ())):
                if nxt == start:
                    found.add(tuple(path))
                elif nxt in allowed and nxt not in path:
                    walk([*path, nxt])

        walk([start])
    return found


def graph_of(selected: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in selected:
        graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def describe(cycle: tuple[str, ...], selected: list[Edge]) -> str:
    steps = []
    for source, target in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        how = sorted(
            {f"{e.kind}@{e.line}" for e in selected if (e.source, e.target) == (source, target)}
        )
        steps.append(f"{source} -[{','.join(how)}]->")
    return " ".join([*steps, cycle[0]])


def runtime_cycles() -> set[tuple[str, ...]]:
    return cycles(graph_of([e for e in edges() if e.kind != "typing"]))


def typing_cycles() -> set[tuple[str, ...]]:
    """Cycles counting TYPE_CHECKING imports, with the one allowed edge left out."""
    selected = [
        e
        for e in edges()
        if not ((e.source, e.target) == ANNOTATION_ONLY_EDGE and e.kind == "typing")
    ]
    return cycles(graph_of(selected))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_at_top(tree: ast.Module) -> set[str]:
    """Names a module binds itself at top level (not imports): its own classes, etc."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def class_attributes(cls: ast.ClassDef) -> set[str]:
    """The names a class defines: methods, class-level names, slots, ``self.x = ...``."""
    names = defined_at_top(ast.Module(body=cls.body, type_ignores=[]))
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            names.update(
                c.value
                for c in ast.walk(node.value)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
    return names


def in_classes(tree: ast.Module) -> Iterator[tuple[ast.AST, frozenset[str]]]:
    """Every node of *tree*, with the attributes of the classes it is lexically inside."""

    def visit(node: ast.AST, names: frozenset[str]) -> Iterator[tuple[ast.AST, frozenset[str]]]:
        yield node, names
        if isinstance(node, ast.ClassDef):
            names = names | class_attributes(node)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, names)

    yield from visit(tree, frozenset())


def private_accesses(trees: dict[str, ast.Module] = TREES) -> dict[str, list[int]]:
    """Every violation of rule 3, as "module: expression" -> the lines it is on.

    ``other._name`` inside a class that defines ``_name`` itself is that class reading
    another instance of its own (``Workflow._child`` calling ``wf._setup``): allowed.
    """
    found: dict[str, list[int]] = {}
    for module, tree in trees.items():
        own = defined_at_top(tree) | {"self", "cls"}
        for node, class_names in in_classes(tree):
            key = None
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                value = node.value
                if not (
                    (isinstance(value, ast.Name) and value.id in own)
                    or node.attr in class_names
                    or ast.unparse(node) in PUBLIC_UNDERSCORE_NAMES
                ):
                    key = f"{module}: {ast.unparse(node)}"
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) >= 2
                and isinstance(name := node.args[1], ast.Constant)
                and isinstance(name.value, str)
                and is_private(name.value)
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id in own)
            ):
                key = f"{module}: {node.func.id}({ast.unparse(node.args[0])}, {name.value!r})"
            elif isinstance(node, ast.ImportFrom):
                source = resolve(module, node)
                names = [
                    a.name
                    for a in node.names
                    if is_private(a.name) and f"{source}.{a.name}" not in MODULES
                ]
                if names and source != module:
                    key = f"{module}: from {source} import {', '.join(names)}"
            if key is not None:
                found.setdefault(key, []).append(getattr(node, "lineno", 0))
    return found


def test_the_modules_are_found() -> None:
    assert {"memable", "memable._engine", "memable._workflow", "memable.storage"} <= set(MODULES)
    assert any(e.kind == "typing" for e in edges())
    assert ("memable._workflow", "memable._context", "typing") in {
        (e.source, e.target, e.kind) for e in edges()
    }


def test_the_checks_see_what_they_should() -> None:
    assert cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}) == {
        ("a", "b"),
        ("a", "b", "c"),
    }
    code = """
import os
from memable._engine import _helper, Engine
_CACHE = {}
def f(engine, ctx):
    engine._storage; ctx._run(); _CACHE._x; os._exit; getattr(engine, "_now"); engine.__class__
class C:
    __slots__ = ("_a",)
    def g(self, other):
        self._b = other._a; other._b; other._c
"""
    found = private_accesses({"memable._x": ast.parse(code)})
    assert sorted(found) == [
        "memable._x: ctx._run",
        "memable._x: engine._storage",
        "memable._x: from memable._engine import _helper",
        "memable._x: getattr(engine, '_now')",
        "memable._x: other._c",
    ]


def test_no_runtime_import_cycles() -> None:
    """Rule 1: the imports that run form no cycle."""
    selected = [e for e in edges() if e.kind != "typing"]
    found = runtime_cycles()
    print(f"{len(found)} runtime import cycles")
    print(*(describe(c, selected) for c in sorted(found)), sep="\n")
    new = sorted(found - ALLOWED_RUNTIME_CYCLES)
    assert not new, "new import cycles:\n" + "\n".join(describe(c, selected) for c in new)


def test_type_checking_imports_add_only_the_annotation_cycle() -> None:
    """Rule 2: with TYPE_CHECKING imports counted, only _workflow -> _context closes one."""
    found = typing_cycles() - runtime_cycles()
    print(f"{len(found)} cycles through TYPE_CHECKING imports")
    print(*(describe(c, edges()) for c in sorted(found)), sep="\n")
    new = sorted(found - ALLOWED_TYPING_CYCLES)
    assert not new, "new import cycles through TYPE_CHECKING imports:\n" + "\n".join(
        describe(c, edges()) for c in new
    )


def test_no_private_access_across_modules() -> None:
    """Rule 3: nothing reads another module's or class's underscore names."""
    found = private_accesses()
    print(f"{len(found)} private accesses ({sum(map(len, found.values()))} occurrences)")
    print(*(f"{k} (line {', '.join(map(str, sorted(found[k])))})" for k in sorted(found)), sep="\n")
    new = sorted(set(found) - ALLOWED_PRIVATE_ACCESS)
    assert not new, "new private accesses:\n" + "\n".join(f"{k} (line {found[k]})" for k in new)


def test_the_allowed_lists_only_shrink() -> None:
    """An allowed violation that no longer occurs must be deleted from its list."""
    gone = sorted(
        [
            *map(str, ALLOWED_RUNTIME_CYCLES - runtime_cycles()),
            *map(str, ALLOWED_TYPING_CYCLES - (typing_cycles() - runtime_cycles())),
            *(ALLOWED_PRIVATE_ACCESS - set(private_accesses())),
        ]
    )
    assert not gone, "fixed, so delete from the ALLOWED_* lists:\n" + "\n".join(gone)
