"""The package layout of `lane/` holds: layers with one-way arrows, an engine that knows no lanes, no cycles.

Read from the source with `ast` (every import, module-level or inside a function, under
TYPE_CHECKING too), so an arrow added anywhere fails here, not in a review. docs/architecture.md
draws the same layers.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
LANE: Final = ROOT / "lane"
# Lowest first: a package may import only packages before it (and itself).
LAYERS: Final = ("core", "engine", "propagation", "telemetry", "dataplane", "process", "gateway", "sidecar",
                 "graph", "cli", "demo")
OUTSIDE: Final = ("mesh_config", "loadtest", "rollout", "locust", "kubernetes", "tests")
MAX_LINES: Final = 450  # "no module over ~400 lines": the three largest are state machines and the config loader


def _modules() -> dict[str, Path]:
    found = {}
    for path in LANE.rglob("*.py"):
        parts = path.relative_to(LANE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES: Final = _modules()


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import (the layout uses absolute imports)"
            assert node.module is not None
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for name in _imports(path):
            if name.split(".")[0] in OUTSIDE:
                edges[module].add(name)
                continue
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name != "lane":
                edges[module].add(name)
    return edges


EDGES: Final = _edges()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_every_package_is_a_known_layer() -> None:
    packages = {p.name for p in LANE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_nothing_in_lane_imports_the_tools_built_on_it() -> None:
    assert not [(m, d) for m, ds in EDGES.items() for d in ds if d.split(".")[0] in OUTSIDE]


def test_the_engine_imports_nothing_lane_specific() -> None:
    assert not [(m, d) for m, ds in EDGES.items() if _layer(m) == "engine" for d in ds if _layer(d) != "engine"]


def test_arrows_point_down_the_layers() -> None:
    upward = [(m, d) for m, ds in EDGES.items() for d in ds
              if _layer(m) and _layer(d) and LAYERS.index(str(_layer(d))) > LAYERS.index(str(_layer(m)))]
    assert not upward


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components over every import: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles


def test_a_small_top_level_and_no_large_module() -> None:
    top = [p.name for p in LANE.glob("*.py")]
    assert len(top) + len(LAYERS) <= 13, top
    large = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not large


@pytest.mark.parametrize("library", ["lane.propagation.propagator", "lane.propagation.aiohttp_client",
                                     "lane.propagation.aiohttp_server", "lane.propagation.grpc_metadata"])
def test_the_library_needs_only_the_pure_core(library: str) -> None:
    """What apps import stands on `lane.core` alone, and only on its light part (no config, rules, YAML)."""
    seen, todo = set(), [library]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(d for d in EDGES.get(module, ()) if d in MODULES)
    assert {_layer(m) for m in seen} <= {"core", "propagation"}
    assert not seen & {"lane.core.config", "lane.core.config_load", "lane.core.rules", "lane.core.config_yaml"}


def test_the_architecture_picture_is_current() -> None:
    """docs/architecture.svg is what scripts/render-architecture draws from today's imports."""
    loader = importlib.machinery.SourceFileLoader("render_architecture", str(ROOT / "scripts" / "render-architecture"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    edges = module.package_edges()
    assert ("gateway", "dataplane") in edges and ("dataplane", "engine") in edges  # the picture has the main arrows
    assert (ROOT / "docs" / "architecture.svg").read_text(encoding="utf-8") == module.render(edges), (
        "docs/architecture.svg is stale: run scripts/render-architecture")
