"""What a finished run leaves behind: the seen records and its ``runs.jsonl`` line.

Both are written only after the checkpoint that completes the run is durable
(docs/design.md: seen records and runs; a training run), and both are views of that checkpoint: a crash between the
writes is repaired at the next start, which rewrites the seen file from the
checkpoint and logs a missing run line once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allllm.data.seen import SeenMap, SeenRecord, save_seen, seen_path
from allllm.train.metrics import RUNS_FILE
from allllm.train.run_plan import RunPlan
from allllm.util.clock import utc_iso
from allllm.util.faults import fault_point
from allllm.util.jsonl import append_jsonl, read_jsonl


def seen_records_after(
    plan: RunPlan, seen: dict[str, Any], step: int, completed: str
) -> dict[str, Any]:
    """The cumulative seen map once ``plan`` is complete (replay rows are never re-recorded)."""
    out = dict(seen)
    for sid in plan.shard_ids:
        val_seed, val_fraction = plan.split_of(sid)
        out[sid] = SeenRecord(
            val_seed=val_seed,
            val_fraction=val_fraction,
            files=plan.shard_files[sid],  # type: ignore[arg-type]
            rows=plan.shard_rows[sid],
            tokens=plan.shard_tokens[sid],
            step=step,
            run_id=plan.run_id,
            completed=completed,
            **plan.row_filters.get(sid, {}),
        ).to_json()
    return out


def run_summary(
    plan: RunPlan, step: int, last_loss: float | None, val_loss: float | None
) -> dict[str, Any]:
    """One ``runs.jsonl`` line."""
    return {
        "run_id": plan.run_id,
        "shards": plan.shard_ids,
        "shard_files": plan.shard_files,
        "replay_rows": plan.replay_rows,
        "anchor_rows": plan.anchor_rows,
        **plan.filter_counts(),
        "skipped_steps": plan.skipped_steps,
        "start_step": plan.start_step,
        "end_step": step,
        "steps": plan.total_steps,
        "tokens": plan.tokens_done,
        "start": plan.started,
        "end": utc_iso(),
        "final_loss": last_loss,
        "final_val_loss": val_loss,
    }


def write_records(ckpt_dir: Path, seen: dict[str, Any], summary: dict[str, Any] | None) -> None:
    """After the completing checkpoint is durable: seen_datasets.json, then runs.jsonl."""
    fault_point("train.before_seen")
    save_seen(seen_path(ckpt_dir), SeenMap.from_dict(seen, "trainer"))
    fault_point("train.before_runs")
    if summary is not None:
        log_run_once(ckpt_dir, summary)


def log_run_once(ckpt_dir: Path, summary: dict[str, Any]) -> None:
    """Append the run's ``runs.jsonl`` line unless it is already there (crash-safe re-logging)."""
    runs = ckpt_dir / RUNS_FILE
    if not any(r.get("run_id") == summary["run_id"] for r in read_jsonl(runs)):
        append_jsonl(runs, summary, durable=True)
