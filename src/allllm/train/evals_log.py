"""``evals.jsonl``: the forgetting matrix's rows, appended by the trainer and ``eval --by-run``.

Plain JSON lines (no torch): ``status`` reads them. The keys of a line are
documented in :mod:`allllm.use.forgetting`, which shapes the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allllm.util.jsonl import append_jsonl, read_jsonl
from allllm.util.versions import FileFormat

EVALS_FILE = "evals.jsonl"
#: evals.jsonl lines (a line of a newer format is a one-line error: an older allllm must not
#: append beside rows it cannot read)
EVALS_FORMAT = FileFormat("forgetting matrix line", current=1)


def append_row(ckpt_dir: Path, row: dict[str, Any]) -> None:
    """Append one matrix row (durable: it is the record of an evaluation that took minutes)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    append_jsonl(ckpt_dir / EVALS_FILE, {"format_version": EVALS_FORMAT.current, **row}, True)


def read_rows(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``evals.jsonl`` in file order (a line torn by a crash is skipped)."""
    rows = []
    for line in read_jsonl(ckpt_dir / EVALS_FILE):
        version = EVALS_FORMAT.version_of(line)
        if version is None:
            continue
        EVALS_FORMAT.refuse_newer(version, str(ckpt_dir / EVALS_FILE))
        if isinstance(line.get("step"), int) and isinstance(line.get("cells"), list):
            rows.append(line)
    return rows


def has_row(ckpt_dir: Path, step: int, run_id: str | None) -> bool:
    """True when ``evals.jsonl`` holds a row for the checkpoint at ``step`` of ``run_id``."""
    return any(r["step"] == step and r.get("run_id") == run_id for r in read_rows(ckpt_dir))
