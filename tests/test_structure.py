"""Structure checks for the ``mm_lightning`` package (issue 11), generic enough to survive files moving.

They walk the package's sources with ``ast`` rather than naming files: no import circle among ``mm_lightning``
modules, the Lightning-free packages import no Lightning (and ``models/``/``ops/`` no ``torch.distributed``, as
STYLE.md asks), and no import sits inside a function unless it is an optional extra.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(importlib.util.find_spec("mm_lightning").origin).parent
ROOT = PACKAGE_DIR.parent

# Packages usable without Lightning: offline preparation, demo data, model code, and what they build on.
LIGHTNING_FREE = (
    "mm_lightning.prep",
    "mm_lightning.demo",
    "mm_lightning.media",
    "mm_lightning.models",
    "mm_lightning.ops",
    "mm_lightning.losses",
    "mm_lightning.tokenizer",
    "mm_lightning.chat",
)
LIGHTNING_ROOTS = ("lightning", "pytorch_lightning")

# Model code takes parallelism from outside (STYLE.md): these import no ``torch.distributed`` at module level.
NO_DISTRIBUTED = ("mm_lightning.models", "mm_lightning.ops")

# The only packages a function may import: optional extras, absent from the base install (pyproject.toml). Not
# here on purpose: base dependencies (torch, litdata, pyarrow, ...) and fsspec (always installed with lightning, and
# ~60 ms to import); stdlib and mm_lightning modules go at the top too, and a cycle is fixed by moving code instead.
FUNCTION_IMPORT_ALLOWED = {
    "av": "the `video` extra (PyAV), needed only to decode video files",
    "pypdfium2": "the `docs` extra, needed only to render PDF pages",
    "xformers": "the `xformers` extra: Linux x86_64 wheels only, no CPU kernels, used only when CUDA is present",
}


@functools.cache
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """Parse every module of the package.

    Returns:
        Dotted module name (a package by its own name, not ``__init__``) -> (file, syntax tree).
    """
    sources = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return sources


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _walk_imports(
    nodes: Iterable[ast.AST], in_function: bool = False, type_checking: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement under ``nodes``.

    Yields:
        (statement, whether it sits inside a function, whether it sits under ``if TYPE_CHECKING:``).
    """
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function, type_checking
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk_imports(node.body, in_function, True)
            yield from _walk_imports(node.orelse, in_function, type_checking)
        else:
            inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from _walk_imports(ast.iter_child_nodes(node), inside, type_checking)


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    """The dotted names an import statement loads.

    Args:
        node: An ``import`` or ``from ... import`` statement.
        importer: The module holding it, to resolve relative imports.

    Returns:
        One name per imported alias: ``from a.b import c`` gives ``a.b.c`` when that is an ``mm_lightning`` module
        (or is outside the package, so ``from torch import distributed`` reads ``torch.distributed``), else ``a.b``.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: ``.`` is the importer's package, each further dot one package up
        package = importer if _sources()[importer][0].name == "__init__.py" else importer.rpartition(".")[0]
        package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{package}.{base}".rstrip(".")
    names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] or [base]
    return [name if name in _sources() or not name.startswith("mm_lightning.") else base for name in names]


def _lineage(module: str) -> list[str]:
    """``module`` and the packages above it: ``a.b.c`` -> ``[a, a.b, a.b.c]``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _modules_under(package: str) -> list[str]:
    """``package`` (a module, a package, or a namespace package without ``__init__``) and every module below it."""
    return [name for name in _sources() if package in _lineage(name)]


def _import_graph() -> dict[str, set[str]]:
    """Which ``mm_lightning`` modules each one imports, at any depth of its code but not under ``TYPE_CHECKING``.

    Importing ``a.b.c`` also runs ``a.b``'s ``__init__``, so the parent packages of an imported module are edges
    too, except the importer's own packages (already being imported when the importer runs). A module that imports
    its own package by name does depend on that ``__init__``, so a directly imported module is always an edge.
    """
    graph: dict[str, set[str]] = {name: set() for name in _sources()}
    for importer, (_, tree) in _sources().items():
        own = set(_lineage(importer))
        for node, _, type_checking in _walk_imports(tree.body):
            for target in [] if type_checking else _targets(node, importer):
                known = [name for name in _lineage(target) if name in graph]
                if known:
                    graph[importer] |= {known[-1]} | (set(known) - own)
    for importer, imported in graph.items():
        imported.discard(importer)
    return graph


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component, member = set(), None
            while member != node:
                member = stack.pop()
                component.add(member)
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """The shortest import cycle from ``start`` back to itself within ``members`` (breadth-first)."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is in a component but on no cycle")


def test_no_import_cycles():
    graph = _import_graph()
    assert len(graph) > 1, f"no modules found under {PACKAGE_DIR}"
    cycles = set()
    for members in _components(graph):
        for start in sorted(members):
            cycle = _shortest_cycle(graph, start, members)[:-1]
            first = cycle.index(min(cycle))
            cycle = cycle[first:] + cycle[:first]
            cycles.add(" -> ".join([*cycle, cycle[0]]))
    assert not cycles, "import cycles among mm_lightning modules:\n" + "\n".join(sorted(cycles))


@pytest.mark.parametrize("package", LIGHTNING_FREE)
def test_imports_no_lightning(package: str):
    modules = _modules_under(package)
    if not modules:
        pytest.skip(f"{package} does not exist yet (issue 11 moves code there)")
    code = (  # import each module in turn; name the first one that pulls Lightning in
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    found = sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING_ROOTS!r})\n"
        "    if found:\n"
        "        print(f'import {name} imports', *found[:5], '...' if len(found) > 5 else '')\n"
        "        break\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not result.stdout.strip(), result.stdout


@pytest.mark.parametrize("package", NO_DISTRIBUTED)
def test_no_module_level_torch_distributed(package: str):
    if not _modules_under(package):
        pytest.skip(f"{package} does not exist yet")
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for name in _modules_under(package)
        for path, tree in [_sources()[name]]
        for node, in_function, _ in _walk_imports(tree.body)
        if not in_function and any("torch.distributed" in _lineage(target) for target in _targets(node, name))
    ]
    assert not offenders, "module-level torch.distributed imports in model code:\n" + "\n".join(offenders)


def test_no_function_local_imports():
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for name, (path, tree) in _sources().items()
        for node, in_function, type_checking in _walk_imports(tree.body)
        if in_function
        and not type_checking
        and not all(target.split(".")[0] in FUNCTION_IMPORT_ALLOWED for target in _targets(node, name))
    ]
    assert not offenders, (
        f"imports inside functions that belong at the top of the module (only {sorted(FUNCTION_IMPORT_ALLOWED)} "
        "may be imported lazily):\n" + "\n".join(offenders)
    )
