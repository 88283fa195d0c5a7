"""megavid's layering, read from the source with ``ast``: no import cycle, nothing upward.

    base (quiet, tables, faults) < config < kernels < models < parallel < data
        < training < inference < entry points (cli, pretrain, eval, plan, launch,
          tools, features, visualize, kernels.bench, every __main__)

A module may import its own layer and the ones below; entry points may import
each other, without cycles. An import inside a function is allowed only for an
optional heavy dependency (those are not megavid's, so not checked here) and for
the Triton kernel modules, which must be imported after TRITON_INTERPRET is read.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

# where each importable megavid module lives: kernels/ installs as megavid.kernels
ROOTS = {"megavid": REPO / "megavid", "megavid.kernels": REPO / "kernels"}
LAYERS = [
    ("megavid", "megavid.quiet", "megavid.tables", "megavid.faults"),
    ("megavid.config",),
    ("megavid.kernels",),
    ("megavid.models",),
    ("megavid.parallel",),
    ("megavid.data",),
    ("megavid.training",),
    ("megavid.inference",),
]
ENTRY_POINTS = ("megavid.cli", "megavid.pretrain", "megavid.eval", "megavid.plan",
                "megavid.launch", "megavid.tools", "megavid.features", "megavid.visualize",
                "megavid.kernels.bench")
# (importing module, imported module): lazy on purpose, with the reason
LAZY_ALLOWED = {
    ("megavid.kernels.patchify", "megavid.kernels._triton_patchify"): "imports triton",
    ("megavid.kernels.mae_loss", "megavid.kernels._triton_mae_loss"): "imports triton",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


MODULES = _modules()


def _target(module: str, node: ast.AST) -> list[str]:
    """megavid modules an import statement names (the longest existing prefix of each)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names]
    found = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name.startswith("megavid"):
            found.append(name)
    return found


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    edges, lazy = defaultdict(set), []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module].update(t for t in _target(module, node) if t != module)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        lazy += [(module, t, node.lineno) for t in _target(module, node)]
    return edges, lazy


def _rank(module: str) -> int:
    """Layer index; entry points are above every layer."""
    if module.endswith(".__main__") or any(
            module == e or module.startswith(e + ".") for e in ENTRY_POINTS):
        return len(LAYERS)
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[1])):
                best = (rank, name)
    assert best is not None, f"{module}: in no layer; add it to LAYERS or ENTRY_POINTS"
    return best[0]


def _package(module: str) -> str:
    """The unit of the package-level graph: megavid's subpackage or top-level module."""
    if module.startswith("megavid.kernels.bench"):
        return "megavid.kernels.bench"
    return ".".join(module.split(".")[:2])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


EDGES, LAZY = _imports()


def test_no_import_cycle_between_files():
    assert _cycles(EDGES) == []


def test_no_import_cycle_between_packages():
    packages = defaultdict(set)
    for a, targets in EDGES.items():
        for b in targets:
            if _package(a) != _package(b) and b != "megavid":  # every module's parent
                packages[_package(a)].add(_package(b))
    assert _cycles(packages) == []


def test_nothing_imports_upward():
    upward = [f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
              if _rank(b) > _rank(a)]
    assert upward == []


def test_no_import_hides_inside_a_function():
    hidden = [f"{a}:{line} imports {b}" for a, b, line in LAZY if (a, b) not in LAZY_ALLOWED]
    assert hidden == []


def test_tests_import_megavid_at_the_top():
    """Tests follow the same rule: an import of megavid inside a test hides what it exercises."""
    hidden = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(fn)
                           if isinstance(node, ast.ImportFrom) and (node.module or "")
                           .startswith("megavid") or isinstance(node, ast.Import)
                           and node.names[0].name.startswith("megavid")]
    assert hidden == []


def test_every_package_is_installed():
    """pyproject lists packages by hand (kernels/ maps to megavid.kernels): none forgotten."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed
