"""The shape of the package: small modules, no import circles, the layer rules of docs/design.md.

Imports inside functions count (a lazy import is still a dependency); imports
under ``if TYPE_CHECKING:`` do not (they never run). The layer rules are
import-linter contracts in pyproject.toml; this file runs them too, so plain
``pytest`` catches a broken layer, not only CI's ``lint-imports``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "allllm"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The allllm modules ``name`` imports anywhere in its body (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            type_only.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            submodules = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            # `from pkg import submodule` depends on the submodule (the package's own
            # __init__ runs first for any import of its children, circular or not)
            out.update(submodules or ({base} & modules.keys()))
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by job: {long}"


def test_no_import_circles_counting_imports_inside_functions() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_lazy_circle(tmp_path: Path) -> None:
    """The check above can fail: a circle closed by an import inside a function is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    mods = _modules()
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from allllm.train import session\n"
        "def f():\n    from allllm.model import transformer\n"
    )
    assert _imports("allllm.model.sizes", probe, mods) == {"allllm.model.transformer"}


def test_the_layer_contracts_of_pyproject_hold() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    proc = subprocess.run([*command, "--no-cache"], cwd=SRC.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_package_root_holds_only_what_every_layer_shares() -> None:
    root = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir())
    shims = ["status.py"]  # the 0.1.0 path README named, kept for one release
    wings = ["cli", "config", "data", "demo", "hf", "model", "tokenizer", "train", "use", "util"]
    expected = sorted(["__init__.py", "__main__.py", "errors.py", *shims, *wings])
    assert [n for n in root if n != "__pycache__"] == expected


def test_every_benchmark_script_imports() -> None:
    """Benchmarks are not run by the suite, but a moved name must not break them silently."""
    import importlib

    bench = SRC.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        for script in sorted(bench.glob("*.py")):
            importlib.import_module(script.stem)
    finally:
        sys.path.remove(str(bench))
