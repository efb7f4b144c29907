"""The forgetting matrix's training side: freeze a run's subset, evaluate one matrix row.

When a run completes, :func:`freeze_subset` picks a fixed, evenly spread subset
of its effective validation rows (its split minus the rows its row filter kept
out) of about ``train.forgetting_eval_tokens`` tokens; the subset is stored in
the checkpoint's state (``eval_subsets``), so it stays the same for every later
evaluation and rolls back with the checkpoint. :func:`evaluate_row` then gives
the loss of a model on every stored subset and on ``data.eval_shards``: one
row of the matrix (:mod:`allllm.use.forgetting` reads and shows it). It runs on
every rank (each evaluates a share of the rows), as validation does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from allllm.data.dataset import ShardDataset, ShardSource
from allllm.data.registry import ScanResult
from allllm.data.row_filter import RowFilter, effective_rows
from allllm.train.distributed import DistInfo
from allllm.train.run_plan import RunPlan
from allllm.train.validation import capped_rows, evaluate_rows
from allllm.util.clock import utc_iso

Progress = Callable[[int], None]


def run_number(previous: list[dict[str, Any]], seen_before: dict[str, Any], run_id: str) -> int:
    """The 1-based number of the run completing now: one after the last frozen subset, or —
    for a model whose earlier runs predate the matrix — one after the runs its seen map names."""
    if previous:
        return int(previous[-1]["run"]) + 1
    runs = {rec.get("run_id") for rec in seen_before.values() if isinstance(rec, dict)}
    return len(runs - {None, run_id}) + 1


def freeze_subset(
    plan: RunPlan,
    n_rows_of: dict[str, int],
    *,
    seq_len: int,
    budget_tokens: int,
    number: int,
    step: int,
) -> dict[str, Any]:
    """The frozen subset of ``plan``'s validation rows (``n_rows_of``: rows of each shard).

    Deterministic: the same plan gives the same rows. A budget of 0 (or a run without
    validation rows) freezes an empty subset, which keeps the run's number in the matrix.
    """
    shard_of, rows_of = [], []
    if budget_tokens > 0:
        for k, sid in enumerate(plan.shard_ids):
            row_filter = RowFilter.from_dict(plan.row_filters.get(sid))
            val = effective_rows(plan.split_of(sid), sid, n_rows_of[sid], row_filter)[1]
            shard_of.append(np.full(val.size, k, dtype=np.int64))
            rows_of.append(val.astype(np.int64))
    shards: dict[str, list[int]] = {}
    if shard_of:
        flat = np.arange(sum(p.size for p in shard_of), dtype=np.int64)
        picks = capped_rows(flat, budget_tokens, seq_len)
        which, rows = np.concatenate(shard_of)[picks], np.concatenate(rows_of)[picks]
        for k, sid in enumerate(plan.shard_ids):
            mine = rows[which == k]
            if mine.size:
                shards[sid] = sorted(int(r) for r in mine)
    return {
        "run": number,
        "run_id": plan.run_id,
        "step": step,
        "shards": shards,
        "rows": sum(len(r) for r in shards.values()),
    }


@dataclass
class MatrixSets:
    """What one matrix row evaluates: each subset's shards and rows, and the eval shards."""

    cells: list[tuple[dict[str, Any], list[ShardSource], np.ndarray]]  # subset, sources, rows
    eval_shards: tuple[list[ShardSource], np.ndarray] | None
    missing: list[str]  # "run N: shard X" of subsets whose shards are gone (their cell is left out)


def matrix_sets(
    data_dir: Any, scan: ScanResult, subsets: list[dict[str, Any]], *, budget: int, seq_len: int
) -> MatrixSets:
    """Rank 0: how to read every subset (rows as global rows of its own dataset) and the eval
    shards (an evenly spread ``budget``-token subset of all their rows)."""
    known = {e.shard_id: e for e in scan.shards if e.shard_id and e.valid and e.n_rows}
    cells, missing = [], []
    for sub in subsets:
        ids = sorted(sub.get("shards") or {})
        if not ids:
            continue
        gone = [s for s in ids if s not in known]
        if gone:
            missing.append(f"run {sub['run']}: shard {gone[0][:12]}")
            continue
        sources = [known[s].source(data_dir) for s in ids]
        offsets = np.cumsum([0] + [s.n_rows for s in sources])
        rows = np.concatenate(
            [np.asarray(sub["shards"][s], dtype=np.int64) + offsets[k] for k, s in enumerate(ids)]
        )
        cells.append((sub, sources, rows))
    evals = None
    eval_entries = scan.eval_shards()
    if eval_entries and budget > 0:
        sources = [e.source(data_dir) for e in eval_entries]
        total = sum(s.n_rows for s in sources)
        evals = (sources, capped_rows(np.arange(total, dtype=np.int64), budget, seq_len))
    return MatrixSets(cells, evals, missing)


def _loss(
    model: torch.nn.Module,
    sources: list[ShardSource],
    rows: np.ndarray,
    *,
    vocab_limit: int,
    micro_batch_size: int,
    device: torch.device,
    autocast: Callable[[], object],
    info: DistInfo,
    progress: Progress | None,
) -> dict[str, Any]:
    dataset = ShardDataset(sources, vocab_limit=vocab_limit)
    try:
        total, n = evaluate_rows(
            model,
            dataset,
            rows,
            micro_batch_size=micro_batch_size,
            device=device,
            autocast=autocast,
            info=info,
            progress=progress,
        )
    finally:
        dataset.close()
    return {"loss": total / n if n else None, "tokens": n, "rows": int(rows.size)}


def evaluate_row(
    model: torch.nn.Module,
    sets: MatrixSets,
    *,
    vocab_limit: int,
    micro_batch_size: int,
    device: torch.device,
    autocast: Callable[[], object],
    info: DistInfo | None = None,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(cells, eval_shards) of one matrix row: the loss on each subset, and on the eval shards
    (collective under torchrun: every rank calls it with the same ``sets``)."""
    info = info or DistInfo()
    kw = dict(
        vocab_limit=vocab_limit,
        micro_batch_size=micro_batch_size,
        device=device,
        autocast=autocast,
        info=info,
        progress=progress,
    )
    cells = []
    for sub, sources, rows in sets.cells:
        cell = _loss(model, sources, rows, **kw)  # type: ignore[arg-type]
        cells.append({"run": int(sub["run"]), "run_id": sub["run_id"], **cell})
    evals = None
    if sets.eval_shards is not None:
        sources, rows = sets.eval_shards
        evals = {
            **_loss(model, sources, rows, **kw),  # type: ignore[arg-type]
            "shards": [s.shard_id for s in sources],
        }
    return cells, evals


def row_line(
    *,
    step: int,
    checkpoint: str,
    source: str,
    subsets: list[dict[str, Any]],
    run: RunPlan | None,
    cells: list[dict[str, Any]],
    eval_shards: dict[str, Any] | None,
) -> dict[str, Any]:
    """One ``evals.jsonl`` line (use/forgetting.py documents its keys)."""
    return {
        "step": step,
        "checkpoint": checkpoint,
        "created": utc_iso(),
        "source": source,
        "after_run": int(subsets[-1]["run"]) if subsets else 0,
        "run_id": run.run_id if run else None,
        "run_complete": bool(run is not None and run.complete),
        "cells": cells,
        "eval_shards": eval_shards,
    }


def total_rows(sets: MatrixSets) -> int:
    """Rows one matrix row evaluates (the CLI's progress bar)."""
    n = sum(int(rows.size) for _sub, _src, rows in sets.cells)
    return n + (int(sets.eval_shards[1].size) if sets.eval_shards else 0)
