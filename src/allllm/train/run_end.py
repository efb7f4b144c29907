"""What happens when a run completes: the state its final checkpoint holds, then its matrix row.

:func:`close_run` fills in the state of the checkpoint that completes a run,
before that checkpoint is written (so a kill leaves either the old state or the
whole new one): the run's ledger segment, its frozen forgetting subset, the
seen records and the ``runs.jsonl`` summary. :func:`forgetting_row` then, with
the checkpoint durable, evaluates the model on every frozen subset and the eval
shards and appends the row to ``evals.jsonl``; a row a kill prevented is filled
in at the next start (:func:`missing_row`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from allllm.config import Config
from allllm.train.distributed import DistInfo, run_on_rank0
from allllm.train.evals_log import append_row, has_row
from allllm.train.forgetting import evaluate_row, freeze_subset, matrix_sets, row_line, run_number
from allllm.train.ledger_sync import after_run, run_segment
from allllm.train.options import Reporter, TrainOptions
from allllm.train.planning import scan_for
from allllm.train.records import run_summary, seen_records_after
from allllm.train.run_plan import RunPlan
from allllm.train.state import TrainState


def close_run(
    cfg: Config, opts: TrainOptions, ident: Any, state: TrainState, plan: RunPlan, budget: int
) -> None:
    """Rank 0: ``state`` as the checkpoint completing ``plan`` stores it (``budget``: the run's
    ``train.forgetting_eval_tokens``). The caller restores the fields if the save fails."""
    scan = scan_for(cfg, ident, state.seen, opts)
    # the run's documents enter the ledger the checkpoint lists (a kill before the
    # checkpoint leaves an unlisted segment: removed at the next start)
    segment = run_segment(cfg, plan, scan, state.step)
    state.ledger = after_run(cfg, state.ledger or [], segment)
    n_rows = {e.shard_id: e.n_rows or 0 for e in scan.shards if e.shard_id and e.valid}
    subset = freeze_subset(
        plan,
        n_rows,
        seq_len=cfg.data.seq_len,
        budget_tokens=budget,
        number=run_number(state.eval_subsets, state.seen, plan.run_id),
        step=state.step,
    )
    state.eval_subsets = [*state.eval_subsets, subset]
    state.seen = seen_records_after(plan, state.seen, state.step, state.created or "")
    state.run_summary = run_summary(plan, state.step, state.last_loss, state.last_val_loss)


def missing_row(cfg: Config, state: TrainState) -> bool:
    """True when ``state`` ends a run whose matrix row is not in ``evals.jsonl`` yet."""
    run = state.run
    if cfg.train.forgetting_eval_tokens <= 0 or run is None or not run.complete:
        return False
    if not state.eval_subsets:
        return False
    return not has_row(cfg.checkpoint_path, state.step, run.run_id)


def forgetting_row(
    model: torch.nn.Module,
    state: TrainState,
    info: DistInfo,
    device: torch.device,
    autocast: Callable[[], object],
    cfg: Config,
    opts: TrainOptions,
    ident: Any,
    reporter: Reporter,
) -> dict[str, Any] | None:
    """Evaluate ``model`` (the weights of ``state``'s checkpoint) and append its matrix row
    (collective; rank 0 writes). None when there is nothing to evaluate
    (``train.forgetting_eval_tokens`` 0, no subset, no eval shard)."""
    budget = cfg.train.forgetting_eval_tokens
    if budget <= 0:
        return None
    sets = run_on_rank0(
        info,
        lambda: matrix_sets(
            cfg.data_dir,
            scan_for(cfg, ident, state.seen, opts),
            state.eval_subsets,
            budget=budget,
            seq_len=cfg.data.seq_len,
        ),
    )
    for lost in sets.missing:
        reporter.warn(f"forgetting matrix: leaving out {lost} (its files are gone)")
    if not sets.cells and sets.eval_shards is None:
        return None
    cells, evals = evaluate_row(
        model,
        sets,
        vocab_limit=cfg.model.vocab_size,
        micro_batch_size=cfg.train.micro_batch_size,
        device=device,
        autocast=autocast,
        info=info,
    )
    line = row_line(
        step=state.step,
        checkpoint=f"step-{state.step:08d}",
        source="train",
        subsets=state.eval_subsets,
        run=state.run,
        cells=cells,
        eval_shards=evals,
    )
    if info.is_main:
        append_row(cfg.checkpoint_path, line)
    reporter.message(describe_row(line))
    return line


def describe_row(line: dict[str, Any]) -> str:
    """One line for the console: the loss on each earlier run's subset and the eval shards."""
    parts = [f"run {c['run']} {c['loss']:.3f}" for c in line["cells"] if c.get("loss") is not None]
    ev = line.get("eval_shards")
    if ev and ev.get("loss") is not None:
        parts.append(f"eval shards {ev['loss']:.3f}")
    return f"forgetting matrix, after run {line['after_run']}: " + (", ".join(parts) or "no rows")
