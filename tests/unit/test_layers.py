"""The package reads top-down: no import cycle between modules or subpackages, no long functions.

Layers, top to bottom (`LAYERS`): cli/commands/api -> pipeline -> search, quantize -> latency,
budgets -> pruning -> zoo -> training -> io -> provenance -> errors, version, bisection, flags.
Every import of a compressor module counts, also one inside a function (a lazy import hides a cycle from
Python, not from a reader).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import compressor

PACKAGE = Path(compressor.__file__).resolve().parent
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["compressor", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_in(source: str, module: str, modules: Iterable[str]) -> set[str]:
    """The package's modules that `source` (the text of `module`) imports, at module level or
    inside any function. `from X import y` reaches the module X.y when there is one, else X."""
    known = set(modules)
    package = module.split(".") if module in known and _is_package(module) else \
        module.split(".")[:-1]
    reached = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            reached.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            reached.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in (_nearest(name, known) for name in reached) if m not in (None, module)}


def _is_package(module: str) -> bool:
    return module == "compressor" or (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py"
                                      ).is_file()


def _nearest(name: str, known: set[str]) -> str | None:
    """`name` or its nearest enclosing module of the package; None outside the package."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (`imports_in`), for every module."""
    modules = module_files()
    return {module: imports_in(path.read_text(), module, modules)
            for module, path in modules.items()}


def layer_of(module: str) -> str:
    """The layer a module belongs to: its subpackage (compressor.pruning for
    compressor.pruning.skeleton), or itself for a top-level module and the package root."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return module


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    layers: dict[str, set[str]] = {}
    for module, targets in graph.items():
        mine = layer_of(module)
        layers.setdefault(mine, set()).update(layer_of(t) for t in targets if layer_of(t) != mine)
    return layers


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_the_walk_sees_imports_inside_functions():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    modules = module_files()
    source = ("from compressor import pruning\n"
              "from compressor.errors import UserError\n"
              "import numpy\n"
              "def late():\n"
              "    from compressor.pipeline.final import finish\n"
              "    from . import report\n")
    assert imports_in(source, "compressor.io.export", modules) == {
        "compressor.pruning", "compressor.errors", "compressor.pipeline.final",
        "compressor.io.report"}
    assert layer_of("compressor.pruning.skeleton") == "compressor.pruning"
    assert layer_of("compressor.api") == "compressor.api"


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    cycle = find_cycle(layer_graph(graph))
    if cycle is not None:
        edges = [f"{a} -> {b}: " + ", ".join(f"{m} imports {t}" for m in sorted(graph)
                                              if layer_of(m) == a for t in sorted(graph[m])
                                              if layer_of(t) == b)
                 for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle between subpackages: " + " -> ".join(cycle) + "\n"
                             + "\n".join(edges))


LAYERS = (
    {"compressor", "compressor.__main__", "compressor.cli", "compressor.commands", "compressor.api"},
    {"compressor.pipeline"},
    {"compressor.search", "compressor.quantize"},
    {"compressor.latency", "compressor.budgets"},
    {"compressor.pruning"},
    {"compressor.zoo"},
    {"compressor.training"},
    {"compressor.io"},
    {"compressor.provenance"},
    {"compressor.errors", "compressor.version", "compressor.bisection", "compressor.flags"},
)
"""The package's layers, top to bottom (STYLE.md, "Shape of the package"): a module imports only
its own layer and the ones below."""


def test_every_import_goes_down_the_layers():
    rank = {layer: i for i, layers in enumerate(LAYERS) for layer in layers}
    graph = import_graph()
    unranked = sorted({layer_of(m) for m in graph} - set(rank))
    assert not unranked, f"modules in no layer (add them to LAYERS): {unranked}"
    upward = [f"{m} imports {t}" for m in sorted(graph) for t in sorted(graph[m])
              if rank[layer_of(t)] < rank[layer_of(m)]]
    assert not upward, "imports reaching up a layer: " + "; ".join(upward)


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in module_files().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)
