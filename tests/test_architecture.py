"""The package's import structure (docs/ARCHITECTURE.md): tiers with one import direction, and no import circles.

Every ``import mambaseg...`` / ``from mambaseg... import`` of every module under ``src/mambaseg`` is read with ``ast``
(those inside functions too: a lazy import is still a dependency), resolved to the module it loads, and checked.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# tier of each top-level package / module of mambaseg: an import from one package into another must go DOWN
TIERS = {
    "utils": 0, "configs": 0, "version": 0,
    "ops": 1, "data": 1, "metrics": 1, "losses": 1,
    "layers": 2, "runtime": 2,
    "models": 3,
    "checkpoint": 4,
    "inference": 5, "convert": 5,
    "engine": 6,
    "nas": 7, "export": 7,
    "cli": 8, "": 8,  # "" = the package's own __init__ (the public facade)
    "__main__": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "mambaseg").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the mambaseg modules it imports (a name imported from a package resolves to its submodule when
    there is one, else to the package)."""

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                pytest.fail(f"{path}: relative import; the package imports absolutely (from mambaseg....)")
            if isinstance(node, ast.Import):
                edges[mod].update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "mambaseg")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mambaseg":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    edges[mod].add(full if full in modules else resolve(node.module))
        edges[mod].discard(mod)
    return edges


def _tier_of(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    assert "mambaseg.ops.backend" in modules and "mambaseg.engine.trainer" in modules
    return modules, _graph(modules)


def test_every_package_has_a_tier(graph):
    modules, _ = graph
    missing = sorted({_tier_of(m) for m in modules} - set(TIERS))
    assert not missing, f"give these packages a tier in TIERS (and docs/ARCHITECTURE.md): {missing}"


def _not_down(edges: dict[str, set[str]]) -> list[str]:
    """Imports from one package into another that do not go down the tiers."""
    return [f"{a} -> {b} (tier {TIERS[_tier_of(a)]} -> {TIERS[_tier_of(b)]})"
            for a, bs in sorted(edges.items()) for b in sorted(bs)
            if _tier_of(a) != _tier_of(b) and TIERS[_tier_of(b)] >= TIERS[_tier_of(a)]]


def test_imports_between_packages_go_down_the_tiers(graph):
    _, edges = graph
    up = _not_down(edges)
    assert not up, "imports that do not go down the tiers:\n" + "\n".join(up)


def test_no_import_circles(graph):
    _, edges = graph
    assert _circles(edges) == []


def test_inference_never_imports_engine(graph):
    _, edges = graph
    bad = [f"{a} -> {b}" for a, bs in edges.items() for b in bs
           if _tier_of(a) == "inference" and _tier_of(b) == "engine"]
    assert not bad


def test_the_checks_catch_what_they_look_for():
    # a circle through a lazy import and an upward import, on a made-up graph
    edges = {"mambaseg.models.a": {"mambaseg.models.b"}, "mambaseg.models.b": {"mambaseg.models.a"},
             "mambaseg.ops.k": {"mambaseg.layers.x"}, "mambaseg.layers.x": set()}
    assert _circles(edges) == [["mambaseg.models.a", "mambaseg.models.b"]]
    assert _not_down(edges) == ["mambaseg.ops.k -> mambaseg.layers.x (tier 1 -> 2)"]
    assert _not_down({"mambaseg.layers.x": {"mambaseg.ops.k"}, "mambaseg.data.d": {"mambaseg.metrics.m"}}) == \
        ["mambaseg.data.d -> mambaseg.metrics.m (tier 1 -> 1)"]
    assert _tier_of("mambaseg") == "" and _tier_of("mambaseg.cli.train") == "cli"
