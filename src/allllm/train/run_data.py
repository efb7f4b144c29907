"""The rows a planned run reads: one dataset over its shards, the run order's dataset rows.

Opening a plan's data re-derives each shard's training rows from the split the
plan was made with, minus the rows its row filter kept out (the document
ledger: rows of trained documents, held-out and duplicate rows), and refuses a shard whose row count changed under the run,
so a resumed run never trains other rows than the ones it planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from allllm.config import Config
from allllm.data.anchor import find_anchor
from allllm.data.dataset import ShardDataset, ShardSource
from allllm.data.registry import TokenizerIdentity, verify_reads
from allllm.data.row_filter import RowFilter, effective_rows
from allllm.errors import DataError
from allllm.train.distributed import DistInfo, run_on_rank0
from allllm.train.options import TrainOptions
from allllm.train.planning import scan_for
from allllm.train.run_plan import RunPlan
from allllm.train.validation import EVAL_MAX_TOKENS, capped_rows

#: one fixed evaluation set: (metric name, dataset, dataset rows)
EvalSet = tuple[str, ShardDataset, np.ndarray]


@dataclass
class RunData:
    """The dataset a run reads and the dataset row of each position in its order."""

    dataset: ShardDataset
    rows: np.ndarray  # position in the run order -> global dataset row
    val_rows: np.ndarray  # validation rows of the run's shards (global dataset rows)
    sources: dict[str, ShardSource]


def open_run_data(plan: RunPlan, sources: dict[str, ShardSource], vocab_limit: int) -> RunData:
    """The run's dataset over ``sources`` (shard_id -> how to read it; the run's, replay and
    anchor shards)."""
    needed = list(plan.shard_ids) + plan.extra_shards()
    dataset = ShardDataset([sources[s] for s in needed], vocab_limit=vocab_limit)
    offset_of = {sid: int(dataset.offsets[i]) for i, sid in enumerate(needed)}
    parts, val_parts = [], []
    for sid in plan.shard_ids:
        row_filter = RowFilter.from_dict(plan.row_filters.get(sid))
        train_rows, val_rows = effective_rows(
            plan.split_of(sid), sid, sources[sid].n_rows, row_filter
        )
        if train_rows.size != plan.shard_rows[sid]:
            raise DataError(
                f"shard {sid[:12]} now has {train_rows.size} training rows, the run planned "
                f"{plan.shard_rows[sid]}",
                "the shard changed under the run; use --abandon-pending",
            )
        parts.append(train_rows.astype(np.int64) + offset_of[sid])
        val_parts.append(val_rows.astype(np.int64) + offset_of[sid])
    for drawn in (plan.replay, plan.anchor):
        for sid, rws in drawn.items():
            parts.append(np.asarray(rws, dtype=np.int64) + offset_of[sid])
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if rows.size != plan.n_rows:
        raise DataError(f"run {plan.short_id}: {rows.size} rows found, {plan.n_rows} planned")
    val = np.concatenate(val_parts) if val_parts else np.zeros(0, np.int64)
    return RunData(dataset, rows, val, dict(sources))


def find_plan_sources(
    cfg: Config,
    opts: TrainOptions,
    seen: dict[str, Any],
    plan: RunPlan,
    ident: TokenizerIdentity,
) -> tuple[dict[str, ShardSource], list[ShardSource]]:
    """Rank 0: how to read the plan's shards (run, replay and anchor) and the eval shards.

    A shard the plan needs that is missing, changed or invalid stops the run
    with one line: a pending run trains exactly what it planned, or nothing.
    """
    scan = scan_for(cfg, ident, seen, opts)
    known = {
        e.shard_id: e
        for e in scan.shards
        if e.shard_id and e.state in ("new", "seen", "superseded")
    }
    homes = dict.fromkeys(known, cfg.data_dir)
    if plan.anchor and scan.spec is not None:
        for shard in find_anchor(scan.spec, scan):
            sid = shard.entry.shard_id
            if sid and shard.usable and sid not in known:
                known[sid], homes[sid] = shard.entry, shard.directory
    needed = list(plan.shard_ids) + plan.extra_shards()
    lost = [s for s in needed if s not in known]
    if lost:
        names = ", ".join(f"{s[:12]} ({_what(plan, s)})" for s in lost)
        raise DataError(
            f"run {plan.short_id} needs shard(s) that are missing or no longer valid: {names}",
            "restore them, or drop the pending run with --abandon-pending (its shards stay new)",
        )
    # what the run reads is checked once: a shard this process verified for the plan moments
    # ago (new run), or one the digest cache knows unchanged, is not read again
    failed = []
    for home in dict.fromkeys(homes[s] for s in needed):
        failed += verify_reads([known[s] for s in needed if homes[s] == home], home)
    if failed:
        raise DataError(
            f"run {plan.short_id}: shard {failed[0].name} is invalid: {failed[0].reason}",
            "restore the shard's files, or drop the pending run with --abandon-pending",
        )
    evals = [e.source(cfg.data_dir) for e in scan.eval_shards()]
    return {s: known[s].source(homes[s]) for s in needed}, evals


def _what(plan: RunPlan, sid: str) -> str:
    if sid in plan.shard_files:
        return ", ".join(plan.shard_files[sid].values())
    return "anchor shard" if sid in plan.anchor else "replay shard"


def open_plan_data(
    cfg: Config,
    opts: TrainOptions,
    info: DistInfo,
    seen: dict[str, Any],
    plan: RunPlan,
    ident: TokenizerIdentity,
) -> tuple[RunData, list[EvalSet]]:
    """The plan's data on every rank, and its fixed evaluation sets (validation rows of the
    run's shards, all rows of ``data.eval_shards``, each a spread subset of ~64k tokens)."""
    sources, eval_sources = run_on_rank0(
        info, lambda: find_plan_sources(cfg, opts, seen, plan, ident)
    )
    vocab, seq = cfg.model.vocab_size, cfg.data.seq_len
    data = open_run_data(plan, sources, vocab)
    eval_sets: list[EvalSet] = [
        ("val_loss", data.dataset, capped_rows(data.val_rows, EVAL_MAX_TOKENS, seq))
    ]
    if eval_sources:
        ds = ShardDataset(eval_sources, vocab_limit=vocab)
        eval_sets.append(("eval_loss", ds, capped_rows(np.arange(len(ds)), EVAL_MAX_TOKENS, seq)))
    return data, eval_sets
