"""The import structure of the library, read from the source with `ast` (nothing is imported).

The rules (README, "Layout"): no import cycle among `mesh/` modules; `mesh/` never imports the apps
(`services`) or the bench; nats-py is imported only inside the seam, `mesh/_nats/`. An import cycle
counts imports at module level, including under `if TYPE_CHECKING:` and in `try:` blocks (a cycle
mypy sees is still a cycle of design); imports inside functions do not count. `from mesh import
subjects` depends on the module `mesh.subjects`; `from mesh import Agent` depends on the package's
`__init__.py`, so a module that takes a name from a package whose `__init__.py` imports it back is
in a cycle. The other two rules count every import, wherever it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parent.parent
LIBRARY = "mesh"
SEAM = "mesh._nats"
APPS = ("services", "bench")
NATS = ("nats",)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    """One imported dotted name, where it is imported, and whether at module level."""

    target: str
    line: int
    module_level: bool


@dataclass
class Library:
    root: Path
    modules: dict[str, Module] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, package: str = LIBRARY) -> Library:
        library = cls(root)
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            library.modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
        return library

    def where(self, module: str, line: int) -> str:
        return f"{self.modules[module].path.relative_to(self.root)}:{line}"

    def imports(self, module: Module) -> Iterator[Import]:
        """Every dotted name `module` imports: `from a.b import c` gives `a.b.c`."""
        for node, module_level in _import_nodes(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(alias.name, node.lineno, module_level)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module)
                for alias in node.names:
                    yield Import(f"{base}.{alias.name}" if base else alias.name, node.lineno, module_level)
            else:  # importlib.import_module("x") or __import__("x") with a literal name
                assert isinstance(node, ast.Call) and isinstance(node.args[0], ast.Constant)
                yield Import(str(node.args[0].value), node.lineno, module_level)

    def dependency(self, target: str) -> str | None:
        """The library module an imported name loads: `mesh.bus.Bucket` is `mesh.bus`, `mesh.Agent` is `mesh`."""
        parts = target.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in self.modules:
                return ".".join(parts[:k])
        return None

    def graph(self) -> dict[str, dict[str, int]]:
        """Module -> {module it imports at module level: the line of the first such import}."""
        edges: dict[str, dict[str, int]] = {name: {} for name in self.modules}
        for name, module in self.modules.items():
            for found in self.imports(module):
                dependency = self.dependency(found.target)
                if found.module_level and dependency is not None and dependency != name:
                    edges[name].setdefault(dependency, found.line)
        return edges

    def cycles(self) -> list[str]:
        """Each group of modules that import each other, with the imports that close the loop."""
        graph = self.graph()
        return [
            "\n".join(
                f"  {a} imports {b} ({self.where(a, line)})"
                for a in component
                for b, line in sorted(graph[a].items())
                if b in component
            )
            for component in _strongly_connected(graph)
        ]

    def imports_of(self, top_level: tuple[str, ...], outside: str | None = None) -> list[str]:
        """Every import of a top-level package in `top_level` by a module not under `outside`."""
        found = []
        for name, module in self.modules.items():
            if outside is not None and (name == outside or name.startswith(outside + ".")):
                continue
            for imported in self.imports(module):
                if imported.target.split(".")[0] in top_level:
                    found.append(f"  {name} imports {imported.target} ({self.where(name, imported.line)})")
        return found


def _import_nodes(tree: ast.Module) -> Iterator[tuple[ast.AST, bool]]:
    """Import statements and literal dynamic imports, each with whether it runs at import time."""

    def visit(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, module_level
            elif _is_dynamic_import(child):
                yield child, module_level
            inside_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from visit(child, module_level and not inside_function)

    yield from visit(tree, True)


def _is_dynamic_import(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not node.args:
        return False
    first = node.args[0]
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    return named and isinstance(first, ast.Constant) and isinstance(first.value, str)


def _absolute(node: ast.ImportFrom, module: Module) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (an import cycle each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def test_no_import_cycle_among_mesh_modules() -> None:
    cycles = Library.read(ROOT).cycles()
    assert not cycles, "import cycles in mesh/ (module level and TYPE_CHECKING imports count):\n" + "\n\n".join(cycles)


def test_the_library_never_imports_the_apps_or_the_bench() -> None:
    library = Library.read(ROOT)
    found = library.imports_of(APPS)
    assert not found, "mesh/ imports the apps (services/) or the bench:\n" + "\n".join(found)
    bench = [name for name in library.modules if name.split(".")[-1] == "bench" or ".bench." in name]
    assert not bench, f"the bench ships inside the library: {bench}"


def test_only_the_nats_seam_imports_nats_py() -> None:
    found = Library.read(ROOT).imports_of(NATS, outside=SEAM)
    assert not found, f"nats-py imported outside {SEAM.replace('.', '/')}/:\n" + "\n".join(found)


def test_the_checks_name_the_modules_and_lines_that_break_a_rule(tmp_path: Path) -> None:
    """The rules above, applied to a small made-up library."""
    files = {
        "mesh/__init__.py": "from mesh.a import A\n",
        "mesh/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mesh.b import B\nA = 1\n",
        "mesh/b.py": "from . import a\nimport nats\n\ndef later():\n    from mesh.c import C\n    import services.cli\n",
        "mesh/c.py": "from mesh.b import later\n",
        "mesh/d.py": "from mesh import A\n",
        "mesh/_nats/__init__.py": "import nats.js\nfrom mesh._nats.kv import Bucket\n",
        "mesh/_nats/kv.py": "try:\n    from nats.js.kv import KeyValue as Bucket\nexcept ImportError:\n    pass\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    library = Library.read(tmp_path)

    # mesh.a <-> mesh.b through a TYPE_CHECKING import and a relative one; mesh.b's import of mesh.c
    # runs only when later() is called, so mesh.c -> mesh.b is no cycle. mesh.d imports a name of
    # the package, which mesh/__init__.py does not import back: no cycle either.
    assert library.cycles() == ["  mesh.a imports mesh.b (mesh/a.py:3)\n  mesh.b imports mesh.a (mesh/b.py:1)"]
    assert library.graph()["mesh.d"] == {"mesh": 1}
    assert library.imports_of(APPS) == ["  mesh.b imports services.cli (mesh/b.py:6)"]
    assert library.imports_of(NATS, outside=SEAM) == ["  mesh.b imports nats (mesh/b.py:2)"]
