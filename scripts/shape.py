"""Print the package's shape: import cycles, imports that point up the layers, modules over 400
lines, functions over 80 lines.

Reads the source only (nothing is imported). Imports inside functions count too: a cycle that
is broken only by importing late is still a cycle in the design.

Layers, lowest first: ``core``, ``saes``, ``analysis``, ``circuits``, ``viz``; a module may import
its own layer and the ones below (type-only imports count too).

Usage: ``python scripts/shape.py [package_dir]`` (default ``gsnb``). Exits 1 if it finds a cycle
or an upward import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LAYERS = ("core", "saes", "analysis", "circuits", "viz")


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports (``from gsnb.x import y`` counts ``gsnb.x.y``
    when that is a module, else ``gsnb.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    # A package's __init__ is imported with any of its modules; that is not a dependency.
    return {m for m in found if not name.startswith(m + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(root: Path) -> int:
    paths = sorted(root.rglob("*.py"))
    names = {module_name(p, root): p for p in paths}
    graph = {name: imports_of(path, name, set(names)) for name, path in names.items()}
    found = cycles(graph)
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    upward = [
        f"  {name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(name) is not None
        and layer_of(target) is not None
        and layer_of(target) > layer_of(name)
    ]
    print(f"imports up the layers: {len(upward)}", *upward, sep="\n")
    long_modules = []
    long_functions = []
    for path in paths:
        source, shown = path.read_text(), path.relative_to(root.parent)
        n_lines = len(source.splitlines())
        if n_lines > MAX_MODULE_LINES:
            long_modules.append(f"  {shown} {n_lines}")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"  {shown}:{node.lineno} {node.name} {length}")
    print(f"modules over {MAX_MODULE_LINES} lines: {len(long_modules)}", *long_modules, sep="\n")
    print(
        f"functions over {MAX_FUNCTION_LINES} lines: {len(long_functions)}",
        *long_functions,
        sep="\n",
    )
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gsnb").resolve()))
