"""A demo corpus every machine with Python already has: the standard library's docstrings.

The module, class and function docstrings are read from the stdlib's source
files with :mod:`ast` — never by importing a module (some have side effects) —
in sorted path order, so a given Python version always gives the same text,
and nothing is downloaded. Private modules and names (a leading ``_``), test
suites, demos and short docstrings are left out, and a docstring seen before
(inherited boilerplate) is written once. Each entry is::

    def json.dumps
    Serialize ``obj`` to a JSON formatted ``str``.
    ...

followed by a blank line.
"""

from __future__ import annotations

import ast
import inspect
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from allllm.errors import DataError

SKIP_DIRS = frozenset(
    {
        "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "site-packages",
        "dist-packages", "__pycache__", "ensurepip", "pydoc_data", "encodings", "__phello__",
    }
)  # fmt: skip
MIN_DOC_CHARS = 40


def stdlib_dir() -> Path:
    """The running Python's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path) -> Iterator[Path]:
    """Public ``.py`` files under ``root``, sorted by their path relative to it."""
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_") and rel.name != "__init__.py":
            continue
        found.append(rel)
    for rel in sorted(found, key=lambda p: p.as_posix()):
        yield root / rel


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstrings(source: str, module: str) -> Iterator[tuple[str, str]]:
    """``("module json" | "class json.JSONDecoder" | "def json.dumps", docstring)`` in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return  # a file this Python cannot parse (a template, another version's syntax)
    doc = ast.get_docstring(tree)
    if doc:
        yield f"module {module}", doc

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_"):
                    continue
                name = f"{prefix}.{node.name}"
                text = ast.get_docstring(node)
                if text:
                    kind = "class" if isinstance(node, ast.ClassDef) else "def"
                    yield f"{kind} {name}", text
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body, name)

    yield from walk(tree.body, module)


def iter_entries(root: Path | None = None) -> Iterator[str]:
    """Corpus entries (header line, docstring, blank line), deterministic and deduplicated."""
    root = root or stdlib_dir()
    seen: set[str] = set()
    for path in stdlib_sources(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for header, doc in docstrings(source, module_name(root, path)):
            text = inspect.cleandoc(doc).strip()
            if len(text) < MIN_DOC_CHARS or text in seen:
                continue
            seen.add(text)
            yield f"{header}\n{text}\n\n"


def build_corpus(part_bytes: Sequence[int], root: Path | None = None) -> list[str]:
    """Consecutive parts of the corpus, each ending at the first entry that reaches its size."""
    entries = iter_entries(root)
    parts: list[str] = []
    for target in part_bytes:
        chunks, size = [], 0
        for entry in entries:
            chunks.append(entry)
            size += len(entry.encode("utf-8"))
            if size >= target:
                break
        if size < target:
            raise DataError(
                f"the standard library at {root or stdlib_dir()} has only enough docstrings for "
                f"{sum(len(p.encode()) for p in parts) + size:,} bytes of demo corpus, "
                f"{sum(part_bytes):,} were asked for",
                "ask for a smaller corpus",
            )
        parts.append("".join(chunks))
    return parts
