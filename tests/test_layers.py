"""The architecture, held by tests: imports point down the layers of pyproject.toml's import-linter
contracts (`lint-imports`, also a CI step), every package of rnd has its layer, no two modules
import each other (directly or round a circle), and imports inside functions are for the optional
extras only (their own module, or the body of a Ray task, which runs in another process)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import rnd
from rnd.extras import EXTRA_MODULES, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnd"
#: Functions whose body runs in a Ray worker process: they import what they use there.
RAY_TASK_BODIES = {
    ("rnd/evaluation/runners/ray.py", "_run_cell"),
    ("rnd/serving/ray_engine.py", "replica_app"),
}


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def layer_names(contract: dict) -> set[str]:
    return {name.strip() for layer in contract["layers"] for name in layer.split("|")}


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in proc.stdout


def test_every_module_of_rnd_has_a_layer():
    top = {f"rnd.{m.name}" for m in pkgutil.iter_modules(rnd.__path__)}
    (layers,) = [c for c in contracts() if c["name"].startswith("the packages of rnd")]
    assert layer_names(layers) == top
    for pkg in ("evaluation", "report", "audit"):
        (inner,) = [c for c in contracts() if c["type"] == "layers" and f"rnd.{pkg}." in c["layers"][-1]]
        module = __import__(f"rnd.{pkg}", fromlist=["_"])
        assert layer_names(inner) == {f"rnd.{pkg}.{m.name}" for m in pkgutil.iter_modules(module.__path__)}


def imports_of(path: Path) -> list[tuple[ast.AST, str, str | None]]:
    """(import node, module imported, enclosing function or None) for every import in a file."""
    out: list[tuple[ast.AST, str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
            elif isinstance(child, ast.Import):
                out.extend((child, a.name, function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child, child.module, function))
            else:
                visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles():
    """Tarjan's strongly connected components over module-level imports between rnd's modules:
    each component is one module (a package's `__init__` importing its own modules aside)."""
    files = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {n: set() for n in names}
    for f in files:
        src = module_name(f)
        for _, mod, _ in imports_of(f):
            target = next((m for m in (mod, mod.rpartition(".")[0]) if m in names), None)
            if target and target != src and not src.startswith(target + "."):
                graph[src].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert cycles == []


def test_imports_inside_functions_are_for_the_extras_only():
    extras = {m for mods in EXTRAS.values() for m in mods} | set(EXTRA_MODULES)
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = str(f.relative_to(ROOT))
        for _, mod, function in imports_of(f):
            if function is None or (rel, function) in RAY_TASK_BODIES:
                continue
            if not any(mod == e or mod.startswith(e + ".") for e in extras):
                found.append(f"{rel}:{function} imports {mod}")
    assert found == []
