"""``train(cfg, options)``: the entry point behind ``allllm train`` (see ``session.py``).

This module sets the stage — process group, lock, signals, model, optimizer,
checkpoint I/O — and runs the pending run and then a new one through
``loop.train_run``. Deciding what to train lives in ``session.py``; the step
loop in ``loop.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allllm.config import Config, TrainConfig
from allllm.data.dataset import ShardDataset
from allllm.data.shard_format import utc_iso
from allllm.errors import AllllmError, DataError
from allllm.train import checkpoint as ckpt_io
from allllm.train.distributed import (
    DistInfo,
    broadcast_object,
    env_dist_info,
    gather_objects,
    process_group,
    unwrap,
    wrap_model,
)
from allllm.train.lock import checkpoint_dir_lock
from allllm.train.loop import Bounds, LoopContext, train_run
from allllm.train.metrics import MetricsLog
from allllm.train.optim import make_optimizer
from allllm.train.precision import Precision, pick_device, resolve_precision
from allllm.train.run_plan import RunData, RunPlan, open_run_data
from allllm.train.signals import StopFlag, stop_signals
from allllm.train.start import (
    QuietReporter,
    Reporter,
    StartPoint,
    TrainOptions,
    TrainResult,
    choose_new_run,
    decide_start,
    run_summary,
    scan_for,
    seen_records_after,
    set_aside,
    tokenizer_identity,
    training_differences,
    write_records,
)
from allllm.train.state_dicts import (
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
)
from allllm.train.validation import capped_rows

EVAL_MAX_TOKENS = 1 << 16  # validation per eval: a fixed, spread subset of about this many tokens
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def _peak_flops(device: torch.device, precision: Precision) -> float | None:
    """Dense bf16/fp16 peak of known GPUs, for MFU (None on CPU or unknown cards)."""
    if device.type != "cuda" or precision.autocast_dtype is None:
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _run_rank0(info: DistInfo, fn: Any) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its user error) to every rank."""
    result: Any = None
    if info.is_main:
        try:
            result = fn()
        except AllllmError as exc:
            result = exc
    result = broadcast_object(result, info)
    if isinstance(result, AllllmError):
        raise result
    return result


def train(
    cfg: Config, opts: TrainOptions | None = None, reporter: Reporter | None = None
) -> TrainResult:
    """Run ``allllm train`` for ``cfg``: finish a pending run, then train what is new."""
    opts = opts or TrainOptions()
    reporter = reporter or QuietReporter()
    info = env_dist_info()
    device = pick_device(opts.device, info.local_rank)
    precision = resolve_precision(cfg.train.precision, device)
    with (
        process_group(info, device),
        _rank0_lock(cfg.checkpoint_path, info),
        stop_signals() as stop,
    ):
        return _Trainer(cfg, opts, reporter, info, device, precision, stop).run()


@contextlib.contextmanager
def _rank0_lock(path: Path, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds the checkpoint-dir lock; a refusal is raised on every rank."""
    with contextlib.ExitStack() as stack:
        error: AllllmError | None = None
        if info.is_main:
            try:
                stack.enter_context(checkpoint_dir_lock(path))
            except AllllmError as exc:
                error = exc
        error = broadcast_object(error, info)
        if error is not None:
            raise error
        yield


class _Trainer:
    def __init__(
        self,
        cfg: Config,
        opts: TrainOptions,
        reporter: Reporter,
        info: DistInfo,
        device: torch.device,
        precision: Precision,
        stop: StopFlag,
    ) -> None:
        self.cfg, self.opts, self.reporter = cfg, opts, reporter
        self.info, self.device, self.precision, self.stop = info, device, precision, stop
        self.ckpt_dir = cfg.checkpoint_path
        self.result = TrainResult(status="nothing")
        self.seen: dict[str, Any] = {}
        self.metrics: MetricsLog | None = None
        self.ctx: LoopContext | None = None
        self.fingerprint: str | None = None

    # -- orchestration ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, opts, info = self.cfg, self.opts, self.info
        ident, start = _run_rank0(info, self._decide)
        self.fingerprint = start.tokenizer_fingerprint
        self.seen = dict(start.seen)
        if start.abandoned and not opts.dry_run and info.is_main:
            # before anything can return: the dropped run's leftovers must not stay "latest"
            set_aside(start.abandoned, self.reporter)
        start_step = int(start.state["step"]) if start.state else 0
        early_plan = None
        if start.pending is None and not opts.dry_run:
            # decide before any model is built: "nothing to train" must not load 3B weights
            early_plan = _run_rank0(info, lambda: self._plan_new(ident, start_step))
            if early_plan is None:
                self.result.step = start_step
                self.result.tokens_seen = int((start.state or {}).get("tokens_seen", 0))
                return self.result
        model, step, tokens_seen = self._build_model(start)
        # wrap before the optimizer exists: FSDP2 replaces the parameters with sharded ones
        wrapped = wrap_model(model, info, self.device, cfg.train.fsdp)
        optimizer = make_optimizer(wrapped, cfg.train, self.device)
        scaler = self.precision.grad_scaler()
        if start.checkpoint is not None and not opts.reset_optimizer:
            ref = ckpt_io.CheckpointRef(start.checkpoint, step)
            osd = ckpt_io.load_optimizer_state(ref)
            scaler_state = osd.pop("grad_scaler", None)
            load_optimizer_state(wrapped, optimizer, osd, str(ref.path / ckpt_io.OPTIMIZER_FILE))
            if scaler_state and scaler.is_enabled():
                scaler.load_state_dict(scaler_state)
        elif start.checkpoint is not None:
            self.reporter.warn("--reset-optimizer: starting with fresh optimizer moments")
        if cfg.train.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        if info.is_main and not opts.dry_run:
            self.metrics = MetricsLog(
                self.ckpt_dir,
                tensorboard=cfg.train.tensorboard,
                wandb=cfg.train.wandb,
                run_name=cfg.name or "allllm",
                config=cfg.to_json_dict(),
            )
        self.ctx = LoopContext(
            model=wrapped,
            optimizer=optimizer,
            scaler=scaler,
            precision=self.precision,
            device=self.device,
            info=info,
            bounds=Bounds(
                max_steps=opts.max_steps or cfg.train.max_steps,
                max_tokens=opts.max_tokens or cfg.train.max_tokens,
                max_time=opts.max_time or cfg.train.max_time,
            ),
            stop_requested=lambda: self.stop.requested,
            eval_sets=[],
            flops_per_token=unwrap(model).flops_per_token(cfg.data.seq_len),  # type: ignore[operator]
            peak_flops=_peak_flops(self.device, self.precision),
            log_metrics=self.metrics.log if self.metrics else (lambda _r: None),
            reporter=self.reporter,
            step=step,
            tokens_seen=tokens_seen,
        )
        self.result.step, self.result.tokens_seen = step, tokens_seen
        if start.state is not None:
            self._restore_rng(start.state)
        try:
            if opts.dry_run:
                return self._dry_run(start, ident)
            if start.pending is not None:
                plan = RunPlan.from_dict(start.pending)
                snapshot = start.state["config"]["train"]  # type: ignore[index]
                for line in training_differences(snapshot, cfg.train):
                    self.reporter.warn(f"pending run keeps its own setting — {line}")
                if not self._train_plan(
                    plan, TrainConfig.model_validate(snapshot), ident, resumed=True
                ):
                    return self._finish()
            new_plan = early_plan or _run_rank0(
                info,
                lambda: self._plan_new(ident, self.ctx.step),  # type: ignore[union-attr]
            )
            if new_plan is None:
                return self._finish()
            torch.manual_seed(new_plan.order_seed % (2**63))  # dropout RNG of the new run
            self._train_plan(new_plan, cfg.train, ident, resumed=False)
            return self._finish()
        finally:
            if self.metrics:
                self.metrics.close()

    def _decide(self) -> tuple[Any, StartPoint]:
        ident, _tok = tokenizer_identity(self.cfg, self.reporter.warn)
        start = decide_start(self.cfg, self.opts, self.reporter, ident.fingerprint)
        return ident, start

    def _plan_new(
        self, ident: Any, start_step: int, exclude: set[str] | None = None
    ) -> RunPlan | None:
        """Rank 0: select shards and plan a new run; None (with a message) if nothing is left."""
        scan = scan_for(self.cfg, ident, self.seen, self.opts)
        if exclude:  # dry run: the pending run's shards will be seen by then
            scan.shards = [e for e in scan.shards if e.shard_id not in exclude]
        plan, selection = choose_new_run(self.cfg, scan, self.opts, start_step, self.reporter)
        if plan is None:
            if exclude:
                self.reporter.message("nothing new to train after the pending run")
            elif not scan.shards and not scan.missing:
                self.reporter.message(
                    f"no shards in {self.cfg.data_dir} — run `allllm tokenize --model "
                    f"{self.cfg.name}` first"
                )
            elif not selection.shards:
                self.reporter.message("nothing new to train: every valid shard is already seen")
            else:
                self.reporter.message("nothing to train: the selected shards have no training rows")
        return plan

    def _finish(self) -> TrainResult:
        assert self.ctx is not None
        self.result.step, self.result.tokens_seen = self.ctx.step, self.ctx.tokens_seen
        return self.result

    # -- model and state ----------------------------------------------------------------------
    def _build_model(self, start: StartPoint) -> tuple[torch.nn.Module, int, int]:
        from allllm.model import build_model, empty_model

        cfg = self.cfg
        if start.checkpoint is not None and start.state is not None:
            model = empty_model(cfg.model, device=self.device)
            ref = ckpt_io.CheckpointRef(start.checkpoint, int(start.state["step"]))
            load_model_state(model, ckpt_io.load_model_state(ref), str(ref.path))
            step, tokens = int(start.state["step"]), int(start.state.get("tokens_seen", 0))
            self.reporter.message(f"resuming from {ref.path} (step {step})")
        else:
            torch.manual_seed(cfg.train.seed)
            if cfg.model.init_from:
                self.reporter.message(f"starting from {cfg.model.init_from} (model.init_from)")
            else:
                self.reporter.message("starting from freshly initialised weights")
            model = build_model(cfg.model, device=self.device)
            step, tokens = 0, 0
        unwrap(model).activation_checkpointing = cfg.train.activation_checkpointing  # type: ignore[union-attr]
        return model, step, tokens

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device).tolist()
        return state

    def _restore_rng(self, state: dict[str, Any]) -> None:
        states = state.get("rng") or []
        if len(states) == self.info.world_size:
            mine = states[self.info.rank]
            torch.set_rng_state(torch.tensor(mine["torch"], dtype=torch.uint8))
            if self.device.type == "cuda" and "cuda" in mine:
                torch.cuda.set_rng_state(torch.tensor(mine["cuda"], dtype=torch.uint8), self.device)
        else:
            torch.manual_seed(int(state["step"]) * 1_000_003 + self.info.rank)
            if states and self.cfg.model.dropout > 0:
                self.reporter.warn(
                    f"world size changed ({len(states)} → {self.info.world_size}): dropout random "
                    "numbers are reseeded, so the run is not bit-identical to an unchanged one"
                )

    def _save(self, plan: RunPlan, run_config: dict[str, Any], *, complete: bool) -> None:
        """A checkpoint of the current state (collective; rank 0 writes)."""
        assert self.ctx is not None
        ctx = self.ctx
        plan.complete = complete
        weights = model_state(ctx.model)
        osd = optimizer_state(ctx.model, ctx.optimizer)
        rngs = gather_objects(self._rng_state(), self.info)
        if not self.info.is_main:
            return
        if ctx.scaler.is_enabled():
            osd["grad_scaler"] = ctx.scaler.state_dict()
        completed = utc_iso()
        seen = seen_records_after(plan, self.seen, ctx.step, completed) if complete else self.seen
        summary = (
            run_summary(plan, ctx.step, ctx.last_loss, ctx.last_val_loss) if complete else None
        )
        trainer_state = {
            "run_id": plan.run_id,
            "run_complete": complete,
            "run": plan.to_dict(),
            "run_summary": summary,
            "tokens_seen": ctx.tokens_seen,
            "rng": rngs,
            "world_size": self.info.world_size,
            "config": run_config,
            "tokenizer_fingerprint": self.fingerprint,
            "seen": seen,
            "created": completed,
            "last": {"loss": ctx.last_loss, "val_loss": ctx.last_val_loss},
        }
        ref = ckpt_io.save_checkpoint(
            self.ckpt_dir,
            ctx.step,
            model_state=weights,
            optimizer_state=osd,
            trainer_state=trainer_state,
        )
        self.result.checkpoint = str(ref.path)
        self.reporter.checkpoint_saved(str(ref.path), ctx.step)
        protect = {plan.start_step} if not complete else set()
        ckpt_io.rotate_checkpoints(
            self.ckpt_dir, self.cfg.train.keep_checkpoints, protect, warn=self.reporter.warn
        )
        if complete:
            self.seen = seen
            write_records(self.ckpt_dir, seen, summary)

    # -- one run ------------------------------------------------------------------------------
    def _run_data(
        self, plan: RunPlan, ident: Any
    ) -> tuple[RunData, list[tuple[str, Any, np.ndarray]]]:
        def sources() -> Any:
            scan = scan_for(self.cfg, ident, self.seen, self.opts)
            known = {
                e.shard_id: e
                for e in scan.shards
                if e.shard_id and e.state in ("new", "seen", "superseded")
            }
            needed = list(plan.shard_ids) + [s for s in plan.replay if s not in plan.shard_ids]
            lost = [s for s in needed if s not in known]
            if lost:
                names = ", ".join(
                    f"{s[:12]} ({', '.join(plan.shard_files.get(s, {}).values()) or 'replay shard'})"
                    for s in lost
                )
                raise DataError(
                    f"run {plan.short_id} needs shard(s) that are missing or no longer valid: {names}",
                    "restore them, or drop the pending run with --abandon-pending (its shards stay new)",
                )
            failed = scan.verify([known[s] for s in needed])
            if failed:
                raise DataError(
                    f"run {plan.short_id}: shard {failed[0].name} is invalid: {failed[0].reason}",
                    "restore the shard's files, or drop the pending run with --abandon-pending",
                )
            evals = [e.source(self.cfg.data_dir) for e in scan.eval_shards()]
            return {s: known[s].source(self.cfg.data_dir) for s in needed}, evals

        srcs, eval_srcs = _run_rank0(self.info, sources)
        vocab = self.cfg.model.vocab_size
        data = open_run_data(plan, srcs, vocab)
        seq = self.cfg.data.seq_len
        eval_sets: list[tuple[str, Any, np.ndarray]] = [
            ("val_loss", data.dataset, capped_rows(data.val_rows, EVAL_MAX_TOKENS, seq))
        ]
        if eval_srcs:
            ds = ShardDataset(eval_srcs, vocab_limit=vocab)
            eval_sets.append(
                ("eval_loss", ds, capped_rows(np.arange(len(ds)), EVAL_MAX_TOKENS, seq))
            )
        return data, eval_sets

    def _train_plan(
        self, plan: RunPlan, run_train: TrainConfig, ident: Any, *, resumed: bool
    ) -> bool:
        """Train (the rest of) ``plan``; True when it completed."""
        assert self.ctx is not None
        data, eval_sets = self._run_data(plan, ident)
        self.ctx.eval_sets = eval_sets
        run_config = self.cfg.to_json_dict()
        run_config["train"] = run_train.model_dump(mode="json")
        self.reporter.run_started(
            {
                "run_id": plan.run_id,
                "resumed": resumed,
                "shards": [", ".join(plan.shard_files[s].values()) for s in plan.shard_ids],
                "replay_rows": sum(len(r) for r in plan.replay.values()),
                "rows": plan.n_rows,
                "epochs": plan.epochs,
                "steps_done": plan.steps_done,
                "total_steps": plan.total_steps,
                "total_tokens": plan.total_tokens,
                "step": self.ctx.step,
            }
        )
        started = time.monotonic()
        outcome = train_run(
            self.ctx,
            plan,
            data,
            run_train,
            save=lambda: self._save(plan, run_config, complete=False),
            checkpoint_every=self.cfg.train.checkpoint_every,
            eval_every=self.cfg.train.eval_every,
        )
        data.dataset.close()
        if not outcome.finished:
            self.result.status = "signal" if outcome.reason == "signal" else "bounded"
            self.result.stopped_by = (
                self.stop.name if outcome.reason == "signal" else outcome.reason
            )
            self.result.exit_code = self.stop.exit_code if outcome.reason == "signal" else 0
            self.reporter.warn(
                f"stopped by {self.result.stopped_by} at step {self.ctx.step}; run {plan.short_id} is "
                f"pending ({plan.steps_done}/{plan.total_steps} steps) and continues next time"
            )
            return False
        self._save(plan, run_config, complete=True)
        self.result.status = "trained"
        summary = run_summary(plan, self.ctx.step, self.ctx.last_loss, self.ctx.last_val_loss)
        summary["seconds"] = time.monotonic() - started
        self.result.runs.append(summary)
        self.reporter.run_finished(summary)
        return True

    def _dry_run(self, start: StartPoint, ident: Any) -> TrainResult:
        """The plan with measured time and memory estimates; trains and writes nothing."""
        from allllm.train.estimate import estimate_run

        assert self.ctx is not None
        report: dict[str, Any] = {"pending": None, "new": None, "step": self.ctx.step}
        pending = RunPlan.from_dict(start.pending) if start.pending is not None else None
        if pending is not None:
            report["pending"] = pending.to_dict()
        new_plan = _run_rank0(
            self.info,
            lambda: self._plan_new(
                ident,
                self.ctx.step,
                set(pending.shard_ids) if pending else None,  # type: ignore[union-attr]
            ),
        )
        if new_plan is not None:
            report["new"] = new_plan.to_dict()
        target = pending or new_plan
        if target is not None:
            data, _evals = self._run_data(target, ident)
            report["estimate"] = estimate_run(self.ctx, target, data, self.cfg, pending, new_plan)
            data.dataset.close()
        self.result.status = "dry-run"
        self.result.plan = report
        return self.result
