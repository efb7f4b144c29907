"""``allllm eval --by-run``: a forgetting-matrix row on demand, for any checkpoint that exists.

The trainer appends a row to ``evals.jsonl`` each time a run completes
(:mod:`allllm.use.forgetting`). This evaluates a checkpoint the same way — the
frozen subsets its state lists, the eval shards, the training micro batch
size — so its numbers match the stored row. A row the file lacks is appended
(``source: eval``); ``--all-checkpoints`` does so for every complete checkpoint
that still exists and has no row yet (the end of each run that
``train.keep_run_checkpoints`` kept, the rotating ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from allllm.errors import CheckpointError

if TYPE_CHECKING:
    from allllm.config import Config
    from allllm.use.evaluate import EvalProgress
    from allllm.use.trained import TrainedModel

Warn = Callable[[str], None]


@dataclass
class ByRunResult:
    """The rows evaluated (``eval --by-run --json`` prints ``to_dict()``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # evals.jsonl lines, by step
    appended: list[int] = field(default_factory=list)  # steps whose row was new to the file
    skipped: list[int] = field(default_factory=list)  # steps that already had a row (--all)
    matrix: dict[str, Any] = field(default_factory=dict)  # the matrix after them (Matrix.to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "appended": self.appended,
            "skipped": self.skipped,
            "matrix": self.matrix,
        }


def evaluate_checkpoint_row(
    trained: TrainedModel,
    *,
    progress: EvalProgress | None = None,
    warn: Warn | None = None,
    trust_unverified: bool = False,
) -> dict[str, Any]:
    """The matrix row of ``trained``'s checkpoint (an ``evals.jsonl`` line, not yet written)."""
    from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
    from allllm.data.seen import SeenMap
    from allllm.train.forgetting import evaluate_row, matrix_sets, row_line, total_rows
    from allllm.train.precision import resolve_precision

    cfg, state = trained.cfg, trained.state
    budget = cfg.train.forgetting_eval_tokens
    if budget <= 0:
        raise CheckpointError(
            "train.forgetting_eval_tokens is 0: the forgetting matrix is switched off",
            "set it (default 65536) in the config to evaluate by run",
        )
    ident = TokenizerIdentity.from_description(trained.tokenizer.describe())
    scan = scan_shards(
        cfg.data_dir,
        ScanSpec.from_config(cfg, ident),
        SeenMap.from_dict(state.seen, "checkpoint"),
        trust_unverified=trust_unverified,
    )
    sets = matrix_sets(
        cfg.data_dir, scan, state.eval_subsets, budget=budget, seq_len=cfg.data.seq_len
    )
    for lost in sets.missing:
        if warn:
            warn(f"leaving out {lost} (its files are gone)")
    if not sets.cells and sets.eval_shards is None:
        raise CheckpointError(
            f"nothing to evaluate by run at step {trained.step}: no completed run has a "
            "frozen subset there, and data.eval_shards matches no shard",
            "complete a run with validation rows (data.val_fraction > 0) first",
        )
    precision = resolve_precision(cfg.train.precision, trained.device)
    if progress:
        progress.begin(total_rows(sets))
    try:
        cells, evals = evaluate_row(
            trained.model,
            sets,
            vocab_limit=cfg.model.vocab_size,
            micro_batch_size=cfg.train.micro_batch_size,
            device=trained.device,
            autocast=precision.autocast,
            progress=progress.advance if progress else None,
        )
    finally:
        if progress:
            progress.end()
    return row_line(
        step=trained.step,
        checkpoint=trained.checkpoint.path.name,
        source="eval",
        subsets=state.eval_subsets,
        run=state.run,
        cells=cells,
        eval_shards=evals,
    )


def evaluate_by_run(
    cfg: Config,
    step: int | None = None,
    *,
    all_checkpoints: bool = False,
    device: str | None = None,
    progress: EvalProgress | None = None,
    warn: Warn | None = None,
    trust_unverified: bool = False,
) -> ByRunResult:
    """Evaluate the checkpoint at ``step`` (default: the latest) by run, or with
    ``all_checkpoints`` every complete checkpoint that has no row yet; new rows are appended."""
    from allllm.train.checkpoint import list_checkpoints
    from allllm.use.forgetting import append_row, build_matrix, has_row, read_rows
    from allllm.use.trained import find_trained_checkpoint, load_trained

    result = ByRunResult()
    if all_checkpoints:
        steps = [r.step for r in list_checkpoints(cfg.checkpoint_path) if r.complete]
        if not steps:
            find_trained_checkpoint(cfg, None, warn=warn)  # the one-line "no checkpoint" error
    else:
        steps = [find_trained_checkpoint(cfg, step, warn=warn).step]
    latest_state = None
    for at in steps:
        if all_checkpoints:
            state = find_trained_checkpoint(cfg, at, warn=warn).read_state()
            latest_state = state
            if not state.eval_subsets and not cfg.data.eval_shards:
                continue  # before the first completed run: no column yet
            if has_row(cfg.checkpoint_path, at, state.run.run_id if state.run else None):
                result.skipped.append(at)
                continue
        trained = load_trained(cfg, at, device=device, warn=warn)
        latest_state = trained.state
        line = evaluate_checkpoint_row(
            trained, progress=progress, warn=warn, trust_unverified=trust_unverified
        )
        result.rows.append(line)
        if not has_row(cfg.checkpoint_path, at, line["run_id"]):
            append_row(cfg.checkpoint_path, line)
            result.appended.append(at)
    subsets = latest_state.eval_subsets if latest_state is not None else []
    result.matrix = build_matrix(subsets, read_rows(cfg.checkpoint_path)).to_dict()
    return result
