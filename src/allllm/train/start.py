"""Where one ``allllm train`` starts (docs/design.md: a training run, steps 1–2), decided on rank 0.

The latest complete checkpoint (or ``--from-checkpoint``; with none,
``model.init_from`` or fresh weights), checked against the config's
architecture and tokenizer; the seen records reconciled with it (the
checkpoint wins); and the pending run to finish first, unless
``--abandon-pending`` goes back to the checkpoint that run started from.
Checkpoints that exist but are all unusable stop the run with one line;
``--start-fresh`` sets them aside on purpose.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.config import Config, TrainConfig
from allllm.data.registry import TokenizerIdentity
from allllm.data.seen import (
    SEEN_FORMAT,
    SeenMap,
    load_seen,
    reconcile,
    save_seen,
    seen_differences,
    seen_path,
    stored_version,
)
from allllm.errors import AllllmError, CheckpointError, ConfigError
from allllm.train.checkpoint import (
    CheckpointRef,
    checkpoint_problems,
    clean_temporaries,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
)
from allllm.train.options import Reporter, TrainOptions
from allllm.train.records import log_run_once
from allllm.train.run_plan import RunPlan
from allllm.train.state import TrainState

if TYPE_CHECKING:
    pass


@dataclass
class StartPoint:
    """Where this invocation starts (decided on rank 0, broadcast to all)."""

    checkpoint: Path | None  # weights + optimizer to load
    state: TrainState | None  # its trainer state
    pending: RunPlan | None  # the run to finish first
    seen: dict[str, Any]  # cumulative seen map (shard_id -> record dict)
    tokenizer_fingerprint: str | None
    abandoned: list[Path] = field(default_factory=list)  # set aside before training starts


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


def snapshot_train_config(run_train: dict[str, Any], where: str = "checkpoint") -> TrainConfig:
    """The ``train`` section of a checkpoint's config snapshot (keys newer than it: defaults)."""
    from pydantic import ValidationError

    from allllm.config import describe_validation_error

    try:
        return TrainConfig.model_validate(run_train)
    except ValidationError as exc:
        raise CheckpointError(
            f"the pending run's config snapshot does not validate: "
            f"{describe_validation_error(exc, where + ' config snapshot, section train')}",
            "drop the pending run with --abandon-pending (its shards stay new)",
        ) from None


def training_differences(run_train: dict[str, Any], current: TrainConfig) -> list[str]:
    """Training hyper-parameters that changed since a pending run was planned."""
    ignore = {
        "max_steps",
        "max_tokens",
        "max_time",
        "checkpoint_every",
        "keep_checkpoints",
        "keep_run_checkpoints",
        "forgetting_eval_tokens",
        "eval_every",
        "tensorboard",
        "wandb",
    }
    now = current.model_dump(mode="json")
    # a key newer than the snapshot takes its default for the pending run (what it ran with)
    then = snapshot_train_config(run_train).model_dump(mode="json")
    return [
        f"{k}: run {then.get(k)!r}, config {v!r}"
        for k, v in now.items()
        if k not in ignore and then.get(k) != v
    ]


def _usable_start(
    cfg: Config, opts: TrainOptions, reporter: Reporter
) -> tuple[CheckpointRef | None, list[Path]]:
    """The checkpoint to start from and the paths a fresh start sets aside.

    When complete checkpoints exist but none is usable, training stops with one
    line naming them — it never falls back to fresh weights on its own. With
    ``--start-fresh`` they (and the seen records that describe them) are moved
    aside, never deleted, and training starts fresh on purpose.
    """
    ckpt_dir = cfg.checkpoint_path
    if opts.from_checkpoint is not None:
        if opts.start_fresh:
            raise ConfigError("--start-fresh and --from-checkpoint exclude each other")
        ref = find_checkpoint(opts.from_checkpoint)
        if ref.path.parent.resolve() == ckpt_dir.resolve():
            return ref, [r.path for r in list_checkpoints(ckpt_dir) if r.step > ref.step]
        return ref, []
    ref = latest_checkpoint(ckpt_dir, warn=reporter.warn)
    if ref is not None:
        if opts.start_fresh:
            raise ConfigError(
                f"--start-fresh: {ref.path} is a usable checkpoint; a fresh start is only for a "
                "checkpoint dir whose checkpoints are all unusable",
                f"to train a new model from scratch, use a new config (allllm config init NEW "
                f"--from {cfg.name})",
            )
        return ref, []
    broken = [(r, why) for r, why in checkpoint_problems(ckpt_dir) if r.complete]
    if not broken:
        if opts.start_fresh:
            reporter.message("--start-fresh: no unusable checkpoint to set aside")
        return None, []
    if not opts.start_fresh:
        names = "; ".join(f"{r.path.name}: {why}" for r, why in broken)
        raise CheckpointError(
            f"no usable checkpoint in {ckpt_dir} ({names})",
            "restore them from a backup, or pass --start-fresh to move them aside and train "
            "from fresh weights",
        )
    aside = [r.path for r, _why in broken]
    seen_file = seen_path(ckpt_dir)
    if seen_file.exists():
        aside.append(seen_file)  # its shards were seen by the model that is set aside
    reporter.warn(
        f"--start-fresh: {len(broken)} unusable checkpoint(s) and their seen records are moved "
        "aside; training starts from fresh weights (or model.init_from)"
    )
    return None, aside


def decide_start(
    cfg: Config, opts: TrainOptions, reporter: Reporter, fingerprint: str | None
) -> StartPoint:
    """Rank 0: the checkpoint to load, the pending run, the seen map (reconciled)."""
    ckpt_dir = cfg.checkpoint_path
    clean_temporaries(ckpt_dir)
    ref, abandoned = _usable_start(cfg, opts, reporter)
    state = ref.read_state() if ref else None
    if ref is not None and state is not None:
        diffs = architecture_differences(cfg, state.config)
        if diffs:
            raise CheckpointError(
                f"the config's architecture differs from checkpoint {ref.path}: "
                + "; ".join(diffs),
                "restore those model fields, or train this architecture in a new config "
                "(allllm config init NEW --from ...)",
            )
        theirs = state.tokenizer_fingerprint
        if theirs and fingerprint and theirs != fingerprint:
            raise CheckpointError(
                f"the config's tokenizer differs from the one checkpoint {ref.path} was trained with",
                "restore the tokenizer settings (its ids would not mean the same to this model)",
            )
    if opts.start_fresh and abandoned:
        seen = SeenMap()  # the seen records went aside with the model they describe
    else:
        legacy = state.split_for_legacy_records() if state is not None else None
        legacy = legacy or (cfg.train.seed, cfg.data.val_fraction)
        seen = _reconciled_seen(ckpt_dir, state, opts, reporter, legacy)
    if state is not None and state.run_complete and state.run_summary and not opts.dry_run:
        log_run_once(ckpt_dir, state.run_summary)  # a crash may have come before the line
    pending = state.pending if state is not None else None
    if state is not None and pending is not None and opts.abandon_pending:
        reporter.warn(
            f"dropping pending run {pending.short_id} at step {state.step} "
            f"({pending.steps_done}/{pending.total_steps} steps); its shards stay new; going "
            f"back to step {pending.start_step}"
        )
        back = [
            r for r in list_checkpoints(ckpt_dir) if r.step == pending.start_step and r.complete
        ]
        if back:
            ref = back[0]
            state = ref.read_state()
        elif pending.start_step == 0:
            ref, state = None, None
        else:
            raise CheckpointError(
                f"the checkpoint the pending run started from (step {pending.start_step}) is gone",
                "finish the run instead (drop --abandon-pending)",
            )
        abandoned = [r.path for r in list_checkpoints(ckpt_dir) if r.step > pending.start_step]
        pending = None
    return StartPoint(
        checkpoint=ref.path if ref else None,
        state=state,
        pending=pending,
        seen=seen.to_dict()["shards"] if len(seen) else {},
        tokenizer_fingerprint=fingerprint,
        abandoned=abandoned,
    )


def _reconciled_seen(
    ckpt_dir: Path,
    state: TrainState | None,
    opts: TrainOptions,
    reporter: Reporter,
    legacy_split: tuple[int, float],
) -> SeenMap:
    """The seen map: the checkpoint's, with ``seen_datasets.json`` rewritten to match it.

    A version-1 file's records take ``legacy_split`` (the latest checkpoint's snapshot).
    """
    ckpt_seen = state.seen if state is not None else None
    seen_file = seen_path(ckpt_dir)
    existed = seen_file.exists()
    file_map = load_seen(
        seen_file,
        rebuild_from=lambda: ckpt_seen,
        repair=not opts.dry_run,
        warn=reporter.warn,
        legacy_split=legacy_split,
    )
    seen = reconcile(file_map, ckpt_seen, warn=reporter.warn)
    if state is not None and not opts.dry_run:
        if not existed and len(seen):
            reporter.warn(f"{seen_file} was missing; rebuilt it from the latest checkpoint")
        older = existed and (stored_version(seen_file) or SEEN_FORMAT.current) < SEEN_FORMAT.current
        if not existed or older or seen_differences(file_map, seen):
            save_seen(seen_file, seen)  # the file is a view of the latest checkpoint
    return seen


def set_aside(paths: list[Path], reporter: Reporter) -> None:
    """Move what must not stay "latest" out of the way (never delete it): checkpoints newer than
    the chosen start point, or unusable ones and their seen records on ``--start-fresh``."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    for path in paths:
        target = path.with_name(f"{path.name}.abandoned-{stamp}")
        os.replace(path, target)
        reporter.warn(f"{path.name} moved aside to {target.name}")
