"""The package's structure in numbers, read from the code's imports and definitions (nothing is run).

Run: python scripts/structure.py [--src src/flowood]
Prints the modules and the imports between them (and the import cycles among modules), the largest modules, the
flowood imports that sit inside functions outside the CLI, the public callables with more than 8 parameters, and
the private names one module reaches in another. tests/test_design.py holds the package to the same checks.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "flowood"


def modules(src: Path = SRC) -> dict[str, ast.Module]:
    """Every module's dotted name (``flows.nets``) and parsed tree."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        found[name] = ast.parse(path.read_text())
    return found


def _target(node: ast.ImportFrom, importer: str, names: set[str]) -> list[str]:
    if node.level:
        base = importer.split(".")[: -node.level] if importer != "__init__" else []
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = (node.module or "").removeprefix("flowood").lstrip(".")
    candidates = [f"{module}.{a.name}".lstrip(".") for a in node.names] + [module]
    return [c for c in candidates if c in names][:1] or []


def import_arrows(trees: dict[str, ast.Module]) -> set[tuple[str, str]]:
    """``(importer, imported)`` for every import of one flowood module by another."""
    names, arrows = set(trees), set()
    for importer, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("flowood")):
                targets = _target(node, importer, names)
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("flowood.") for a in node.names
                           if a.name.startswith("flowood.") and a.name.removeprefix("flowood.") in names]
            else:
                continue
            arrows.update((importer, t) for t in targets if t != importer)
    return arrows


def cycles(arrows: set[tuple[str, str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's algorithm)."""
    graph: dict[str, list[str]] = {}
    for a, b in arrows:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def local_imports(trees: dict[str, ast.Module]) -> list[str]:
    """flowood imports inside functions, outside the CLI (most hide an import cycle)."""
    found = set()
    for name, tree in trees.items():
        if name.startswith("cli"):
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    relative = isinstance(node, ast.ImportFrom) and node.level
                    absolute = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowood")
                    plain = isinstance(node, ast.Import) and any(a.name.startswith("flowood") for a in node.names)
                    if relative or absolute or plain:
                        found.add(f"{name}:{node.lineno}")
    return sorted(found)


def _callables(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                        (not item.name.startswith("_") or item.name == "__init__"):
                    yield f"{node.name}.{item.name}", item


def long_signatures(trees: dict[str, ast.Module], limit: int = 8) -> list[str]:
    """Public functions and methods with more than ``limit`` parameters (``self``/``cls`` not counted)."""
    found = []
    for name, tree in trees.items():
        if any(part.startswith("_") for part in name.split(".") if part != "__init__"):
            continue
        for qualname, fn in _callables(tree):
            a = fn.args
            params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            if len(params) > limit:
                found.append(f"{name}.{qualname} ({len(params)})")
    return found


def _defined(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def private_reaches(trees: dict[str, ast.Module]) -> list[str]:
    """Imports of another flowood module's ``_names``, and ``obj._name`` where ``_name`` is not this module's own."""
    found = []
    for name, tree in trees.items():
        own = _defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("flowood")):
                found += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                if isinstance(base, ast.Call) and getattr(base.func, "id", "") == "super":
                    continue
                if node.attr not in own:
                    found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    return found


def largest(src: Path = SRC, count: int = 8) -> list[tuple[str, int]]:
    """The longest modules, in lines."""
    sizes = [(str(p.relative_to(src)), len(p.read_text().splitlines())) for p in src.rglob("*.py")]
    return sorted(sizes, key=lambda s: -s[1])[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=SRC)
    src = parser.parse_args().src
    trees = modules(src)
    arrows = import_arrows(trees)
    print(f"modules: {len(trees)}, imports between them: {len(arrows)}")
    for group in cycles(arrows):
        print(f"  cycle: {' <-> '.join(group)}")
    print("largest modules: " + ", ".join(f"{n} {lines}" for n, lines in largest(src)))
    for title, items in (("flowood imports inside functions outside cli/", local_imports(trees)),
                         ("public callables with more than 8 parameters", long_signatures(trees)),
                         ("private names reached in another module", private_reaches(trees))):
        print(f"{title}: {len(items)}")
        for item in items:
            print(f"  {item}")


if __name__ == "__main__":
    main()
