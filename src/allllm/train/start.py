"""``allllm train``: one invocation of the step-wise procedure (DESIGN.md §8).

1. Take the checkpoint dir's lock; load the latest complete checkpoint (or
   ``--from-checkpoint``, or ``model.init_from``, or fresh weights).
2. Reconcile the seen records with that checkpoint (the checkpoint wins).
3. If its run is pending, finish it exactly (``--abandon-pending`` drops it
   and goes back to the checkpoint the run started from; its shards stay new).
4. Select shards (``--only-new``: valid and not seen) and train a new run.
5. After the checkpoint that completes a run is durable, write the seen
   records and a ``runs.jsonl`` line.

Rank 0 decides (start point, plan) and broadcasts; every rank trains; only
rank 0 writes. Errors found while deciding are raised on every rank.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from allllm.config import Config, TrainConfig
from allllm.data.registry import ScanResult, ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.seen import (
    SeenMap,
    SeenRecord,
    load_seen,
    reconcile,
    save_seen,
    seen_differences,
    seen_path,
)
from allllm.data.shard_format import utc_iso
from allllm.errors import AllllmError, CheckpointError
from allllm.train.checkpoint import (
    CheckpointRef,
    clean_temporaries,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
)
from allllm.train.run_plan import RunPlan, Selection, plan_run, select_shards
from allllm.util.faults import fault_point


class Reporter(Protocol):
    """What ``train`` tells the user (the CLI draws it; tests collect it)."""

    def message(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def run_started(self, info: dict[str, Any]) -> None: ...
    def step(self, record: dict[str, Any]) -> None: ...
    def evaluated(self, record: dict[str, Any]) -> None: ...
    def checkpoint_saved(self, path: str, step: int) -> None: ...
    def run_finished(self, summary: dict[str, Any]) -> None: ...


class QuietReporter:
    """Collects messages; prints nothing (library use, tests)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.steps: list[dict[str, Any]] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def run_started(self, info: dict[str, Any]) -> None:
        self.messages.append(f"run {info['run_id'][:12]} started")

    def step(self, record: dict[str, Any]) -> None:
        self.steps.append(record)

    def evaluated(self, record: dict[str, Any]) -> None:
        pass

    def checkpoint_saved(self, path: str, step: int) -> None:
        self.messages.append(f"checkpoint {path}")

    def run_finished(self, summary: dict[str, Any]) -> None:
        self.messages.append(f"run {summary['run_id'][:12]} finished")


@dataclass
class TrainOptions:
    """The options of one ``allllm train`` invocation."""

    only_new: bool = False
    shards: str | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None
    dry_run: bool = False
    reset_optimizer: bool = False
    abandon_pending: bool = False
    from_checkpoint: Path | None = None
    device: str | None = None
    trust_unverified: bool = False


@dataclass
class TrainResult:
    """What an invocation did; ``exit_code`` follows DESIGN.md §9."""

    status: str  # trained | nothing | bounded | signal | dry-run
    exit_code: int = 0
    step: int = 0
    tokens_seen: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    stopped_by: str | None = None
    plan: dict[str, Any] | None = None


@dataclass
class StartPoint:
    """Where this invocation starts (decided on rank 0, broadcast to all)."""

    checkpoint: Path | None  # weights + optimizer to load
    state: dict[str, Any] | None  # its trainer_state.json
    pending: dict[str, Any] | None  # run plan to finish first
    seen: dict[str, Any]  # cumulative seen map (shard_id -> record dict)
    tokenizer_fingerprint: str | None
    abandoned: list[Path] = field(default_factory=list)  # newer checkpoints set aside


def tokenizer_identity(cfg: Config, warn: Any) -> tuple[TokenizerIdentity, Any]:
    """The config's tokenizer (loaded when possible) as the registry compares shards with it."""
    from allllm.tokenizer.manager import TokenizerManager

    try:
        tok = TokenizerManager.from_config(cfg.tokenizer)
    except AllllmError as exc:
        warn(
            f"tokenizer cannot be loaded here ({exc.one_line()}); shards are compared by tokenizer "
            "backend and path only"
        )
        return TokenizerIdentity(cfg.tokenizer.backend, cfg.tokenizer.path, None), None
    tok.check_vocab(cfg.model.vocab_size)
    info = tok.describe()
    return (
        TokenizerIdentity(
            backend=cfg.tokenizer.backend,
            path=cfg.tokenizer.path,
            fingerprint=tok.fingerprint,
            vocab_size=tok.vocab_size,
            pad_id=info.get("pad_id"),
            eos_id=info.get("eos_id"),
        ),
        tok,
    )


def architecture_differences(current: Config, snapshot: dict[str, Any]) -> list[str]:
    """Model fields that differ between the config and a checkpoint's config snapshot."""
    theirs = dict(snapshot.get("model", {}))
    ours = current.model.architecture()
    return [
        f"{key}: checkpoint {theirs.get(key)!r}, config {value!r}"
        for key, value in ours.items()
        if theirs.get(key) != value
    ]


def training_differences(run_train: dict[str, Any], current: TrainConfig) -> list[str]:
    """Training hyper-parameters that changed since a pending run was planned."""
    ignore = {
        "max_steps",
        "max_tokens",
        "max_time",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "tensorboard",
        "wandb",
    }
    now = current.model_dump(mode="json")
    return [
        f"{k}: run {run_train.get(k)!r}, config {v!r}"
        for k, v in now.items()
        if k not in ignore and run_train.get(k) != v
    ]


def decide_start(
    cfg: Config, opts: TrainOptions, reporter: Reporter, fingerprint: str | None
) -> StartPoint:
    """Rank 0: the checkpoint to load, the pending run, the seen map (reconciled)."""
    ckpt_dir = cfg.checkpoint_path
    clean_temporaries(ckpt_dir)
    ref: CheckpointRef | None
    abandoned: list[Path] = []
    if opts.from_checkpoint is not None:
        ref = find_checkpoint(opts.from_checkpoint)
        if ref.path.parent.resolve() == ckpt_dir.resolve():
            abandoned = [r.path for r in list_checkpoints(ckpt_dir) if r.step > ref.step]
    else:
        ref = latest_checkpoint(ckpt_dir, warn=reporter.warn)
        if ref is None and list_checkpoints(ckpt_dir):
            reporter.warn("no usable checkpoint found; starting from the beginning")
    state = ref.read_state() if ref else None
    if state is not None:
        diffs = architecture_differences(cfg, state.get("config", {}))
        if diffs:
            raise CheckpointError(
                f"the config's architecture differs from checkpoint {ref.path}: "
                + "; ".join(diffs),  # type: ignore[union-attr]
                "restore those model fields, or train this architecture in a new config "
                "(allllm config init NEW --from ...)",
            )
        theirs = state.get("tokenizer_fingerprint")
        if theirs and fingerprint and theirs != fingerprint:
            raise CheckpointError(
                f"the config's tokenizer differs from the one checkpoint {ref.path} was trained with",  # type: ignore[union-attr]
                "restore the tokenizer settings (its ids would not mean the same to this model)",
            )
    ckpt_seen = state.get("seen", {}) if state else None
    seen_file = seen_path(ckpt_dir)
    existed = seen_file.exists()
    file_map = load_seen(
        seen_file, rebuild_from=lambda: ckpt_seen, repair=not opts.dry_run, warn=reporter.warn
    )
    seen = reconcile(file_map, ckpt_seen, warn=reporter.warn)
    if state is not None and not opts.dry_run:
        if not existed and len(seen):
            reporter.warn(f"{seen_file} was missing; rebuilt it from the latest checkpoint")
        if not existed or seen_differences(file_map, seen):
            save_seen(seen_file, seen)  # the file is a view of the latest checkpoint
    if (
        state is not None
        and state.get("run_complete")
        and state.get("run_summary")
        and not opts.dry_run
    ):
        log_run_once(ckpt_dir, state["run_summary"])  # a crash may have come before the line
    pending = None
    if state is not None and not state.get("run_complete", True):
        pending = state.get("run")
        if opts.abandon_pending:
            run = RunPlan.from_dict(pending)  # type: ignore[arg-type]
            reporter.warn(
                f"dropping pending run {run.short_id} at step {state['step']} "
                f"({run.steps_done}/{run.total_steps} steps); its shards stay new; going back to "
                f"step {run.start_step}"
            )
            pending = None
            back = [
                r for r in list_checkpoints(ckpt_dir) if r.step == run.start_step and r.complete
            ]
            if back:
                ref = back[0]
                state = ref.read_state()
            elif run.start_step == 0:
                ref, state = None, None
            else:
                raise CheckpointError(
                    f"the checkpoint the pending run started from (step {run.start_step}) is gone",
                    "finish the run instead (drop --abandon-pending)",
                )
            abandoned = [r.path for r in list_checkpoints(ckpt_dir) if r.step > run.start_step]
    return StartPoint(
        checkpoint=ref.path if ref else None,
        state=state,
        pending=pending,
        seen=seen.to_dict()["shards"] if len(seen) else {},
        tokenizer_fingerprint=fingerprint,
        abandoned=abandoned,
    )


def set_aside(paths: list[Path], reporter: Reporter) -> None:
    """Move checkpoints newer than the chosen start point out of the way (never delete them)."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    for path in paths:
        target = path.with_name(f"{path.name}.abandoned-{stamp}")
        os.replace(path, target)
        reporter.warn(f"{path.name} is newer than the start point: moved aside to {target.name}")


def scan_for(
    cfg: Config, ident: TokenizerIdentity, seen: dict[str, Any], opts: TrainOptions
) -> ScanResult:
    """The registry's view of data.dir for this config and seen map."""
    return scan_shards(
        cfg.data_dir,
        ScanSpec.from_config(cfg, ident),
        SeenMap.from_dict(seen, "checkpoint"),  # the bare shards map
        trust_unverified=opts.trust_unverified,
    )


def choose_new_run(
    cfg: Config, scan: ScanResult, opts: TrainOptions, start_step: int, reporter: Reporter
) -> tuple[RunPlan | None, Selection]:
    """Select shards and plan a new run (None when nothing is left to train)."""
    selection = select_shards(scan, only_new=opts.only_new, pattern=opts.shards)
    for entry, why in selection.excluded:
        reporter.warn(f"skipping {entry.name}: {why}")
    if selection.retrain:
        reporter.warn(
            f"{len(selection.retrain)} seen shard(s) will be trained again (no --only-new); "
            "use --only-new to train only new shards"
        )
    # digests are checked before any training (status --verify does the same)
    failed = scan.verify(selection.shards)
    for entry in failed:
        reporter.warn(f"skipping {entry.name}: invalid: {entry.reason}")
    shards = [e for e in selection.shards if e not in failed]
    if not shards:
        return None, selection
    plan = plan_run(cfg, shards, scan, start_step=start_step, started=utc_iso())
    if plan.n_rows == 0:
        return None, selection
    return plan, selection


def seen_records_after(
    plan: RunPlan, seen: dict[str, Any], step: int, completed: str
) -> dict[str, Any]:
    """The cumulative seen map once ``plan`` is complete (replay rows are never re-recorded)."""
    out = dict(seen)
    for sid in plan.shard_ids:
        out[sid] = SeenRecord(
            files=plan.shard_files[sid],  # type: ignore[arg-type]
            rows=plan.shard_rows[sid],
            tokens=plan.shard_tokens[sid],
            step=step,
            run_id=plan.run_id,
            completed=completed,
        ).model_dump(mode="json")
    return out


def run_summary(
    plan: RunPlan, step: int, last_loss: float | None, val_loss: float | None
) -> dict[str, Any]:
    """One ``runs.jsonl`` line."""
    return {
        "run_id": plan.run_id,
        "shards": plan.shard_ids,
        "shard_files": plan.shard_files,
        "replay_rows": sum(len(r) for r in plan.replay.values()),
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
    from allllm.train.metrics import RUNS_FILE, _append_line, read_jsonl

    runs = ckpt_dir / RUNS_FILE
    if not any(r.get("run_id") == summary["run_id"] for r in read_jsonl(runs)):
        _append_line(runs, summary, durable=True)


__all__ = [
    "QuietReporter",
    "Reporter",
    "StartPoint",
    "TrainOptions",
    "TrainResult",
    "choose_new_run",
    "decide_start",
    "scan_for",
    "tokenizer_identity",
]
