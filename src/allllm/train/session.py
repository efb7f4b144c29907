"""``train(cfg, options)``: one invocation of ``allllm train`` (docs/design.md: a training run), start to end.

1. Take the checkpoint dir's lock; decide where to start (:mod:`.start`): the
   latest complete checkpoint (or ``--from-checkpoint``, or ``model.init_from``,
   or fresh weights), the seen records reconciled with it.
2. If its run is pending, finish it exactly (``--abandon-pending`` drops it
   and goes back to the checkpoint the run started from; its shards stay new).
3. Select shards (``--only-new``: valid and not seen) and train a new run
   (:mod:`.planning`).
4. After the checkpoint that completes a run is durable, write the seen
   records and a ``runs.jsonl`` line (:mod:`.records`).

A :class:`Session` sets the stage — model, :func:`~.parallelize.parallelize`,
optimizer, the :class:`~.state.TrainState` — and drives each run through
:func:`~.loop.train_run`. Rank 0 decides (start point, plan) and broadcasts;
every rank trains; only rank 0 writes. Errors found while deciding are raised
on every rank.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from allllm.config import Config, TrainConfig
from allllm.data.anchor_pool import AnchorPool
from allllm.train import checkpoint as ckpt_io
from allllm.train.distributed import (
    DistInfo,
    env_dist_info,
    process_group,
    run_on_rank0,
)
from allllm.train.ledger_sync import (
    clean_ledger,
    documents_of,
    ensure_ledger,
    ledger_view,
    open_ledger,
)
from allllm.train.lock import rank0_lock
from allllm.train.loop import Bounds, LoopContext, train_run
from allllm.train.metrics import MetricsLog, peak_flops
from allllm.train.model_setup import prepare_model, restore_optimizer
from allllm.train.optim import apply_hyperparams, make_optimizer
from allllm.train.options import QuietReporter, Reporter, TrainOptions, TrainResult
from allllm.train.planning import choose_new_run, nothing_left, scan_for
from allllm.train.precision import Precision, pick_device, resolve_precision
from allllm.train.records import run_summary, write_records
from allllm.train.run_data import open_plan_data
from allllm.train.run_end import close_run, forgetting_row, missing_row
from allllm.train.run_plan import RunPlan
from allllm.train.saving import collect_for_save
from allllm.train.sharded_checkpoint import shard_files
from allllm.train.signals import StopFlag, stop_signals
from allllm.train.start import (
    StartPoint,
    decide_start,
    set_aside,
    snapshot_train_config,
    tokenizer_identity,
    training_differences,
)
from allllm.train.state import TrainState
from allllm.util.clock import utc_iso


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
        rank0_lock(cfg.checkpoint_path, info),
        stop_signals() as stop,
    ):
        return Session(cfg, opts, reporter, info, device, precision, stop).run()


class Session:
    """One invocation: the start point, the model and optimizer, and the runs it trains."""

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
        self.state = TrainState()
        self.metrics: MetricsLog | None = None
        self.ctx: LoopContext | None = None
        self.loaded_optimizer = False  # moments (and param groups) came from a checkpoint
        self.ident: Any = None  # the tokenizer identity shards are checked against

    # -- orchestration ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, opts, info = self.cfg, self.opts, self.info
        ident, start, ledger = run_on_rank0(info, self._decide)
        self.ident = ident
        self.state = start.state or TrainState()
        self.state.seen = dict(start.seen)
        self.state.ledger = ledger
        self.state.tokenizer_fingerprint = start.tokenizer_fingerprint
        if start.abandoned and not opts.dry_run and info.is_main:
            # before anything can return: the dropped run's leftovers must not stay "latest"
            set_aside(start.abandoned, self.reporter)
        early_plan = None
        # a kill after a run's final checkpoint left its forgetting-matrix row out: fill it in
        fill = start.state is not None and not opts.dry_run
        fill = fill and run_on_rank0(info, lambda: missing_row(cfg, self.state))
        if start.pending is None:
            # decide before any model is built: "nothing to train" must not load 3B weights
            # (nor build and initialise them for a dry run that has nothing to estimate)
            early_plan = run_on_rank0(info, lambda: self._plan_new(ident, self.state.step))
            if early_plan is None:
                if opts.dry_run:
                    from allllm.train.estimate import nothing_to_train_report

                    self.result.status = "dry-run"
                    self.result.plan = nothing_to_train_report(self)
                if fill:
                    self._matrix_row(self._model(start))
                return self._finish()
        # before the optimizer exists: FSDP2 replaces the parameters with sharded ones
        model = self._model(start)
        optimizer = make_optimizer(model, cfg.train, self.device)
        scaler = self.precision.grad_scaler()
        if start.checkpoint is not None and not opts.reset_optimizer:
            scaler_state = restore_optimizer(model, optimizer, start, info)
            self.loaded_optimizer = True
            if scaler_state and scaler.is_enabled():
                scaler.load_state_dict(scaler_state)
        elif start.checkpoint is not None:
            self.reporter.warn("--reset-optimizer: starting with fresh optimizer moments")
        if info.is_main and not opts.dry_run:
            self.metrics = MetricsLog(
                self.ckpt_dir,
                tensorboard=cfg.train.tensorboard,
                wandb=cfg.train.wandb,
                run_name=cfg.name or "allllm",
                config=cfg.to_json_dict(),
            )
        self.ctx = LoopContext(
            model=model,
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
            flops_per_token=model.flops_per_token(cfg.data.seq_len),  # type: ignore[operator]
            peak_flops=peak_flops(self.device, self.precision),
            log_metrics=self.metrics.log if self.metrics else (lambda _r: None),
            reporter=self.reporter,
            state=self.state,
        )
        if start.state is not None:
            self._restore_rng()
        if fill:
            self._matrix_row(model)
        try:
            if opts.dry_run:
                from allllm.train.estimate import dry_run_report

                self.result.status = "dry-run"
                self.result.plan = dry_run_report(self, start, ident, early_plan)
                return self._finish()
            if start.pending is not None:
                snapshot = self.state.config["train"]
                for line in training_differences(snapshot, cfg.train):
                    self.reporter.warn(f"pending run keeps its own setting — {line}")
                pending_train = snapshot_train_config(snapshot, str(start.checkpoint))
                if not self._train_plan(start.pending, pending_train, ident, resumed=True):
                    return self._finish()
            new_plan = early_plan or run_on_rank0(
                info, lambda: self._plan_new(ident, self.state.step)
            )
            if new_plan is None:
                return self._finish()
            torch.manual_seed(new_plan.order_seed % (2**63))  # dropout RNG of the new run
            self._train_plan(new_plan, cfg.train, ident, resumed=False)
            return self._finish()
        finally:
            if self.metrics:
                self.metrics.close()

    def _decide(self) -> tuple[Any, StartPoint, list[dict[str, Any]]]:
        ident, _tok = tokenizer_identity(self.cfg, self.reporter.warn)
        start = decide_start(self.cfg, self.opts, self.reporter, ident.fingerprint)
        # the start checkpoint's ledger (rolled back with it); unlisted segments are removed
        refs = start.state.ledger if start.state is not None else None
        ledger = ensure_ledger(
            self.cfg,
            refs,
            start.seen,
            lambda: scan_for(self.cfg, ident, start.seen, self.opts),
            self.reporter.warn,
        )
        if not self.opts.dry_run:
            clean_ledger(self.cfg, ledger)
        return ident, start, ledger

    def _plan_new(
        self, ident: Any, start_step: int, exclude: set[str] | None = None
    ) -> RunPlan | None:
        """Rank 0: select shards and plan a new run; None (with a message) if nothing is left."""
        scan = scan_for(self.cfg, ident, self.state.seen, self.opts)
        if exclude:  # dry run: the pending run's shards will be seen by then
            scan.shards = [e for e in scan.shards if e.shard_id not in exclude]
        plan, selection = choose_new_run(
            self.cfg,
            scan,
            self.opts,
            start_step,
            self.reporter,
            ledger=ledger_view(open_ledger(self.cfg, self.state.ledger)),
            docs=documents_of(self.cfg.data_dir),
            pool=AnchorPool.from_dict(self.state.anchor, self.cfg.train.seed),
        )
        if plan is None or plan.n_rows == 0:
            self.reporter.message(nothing_left(self.cfg, scan, selection, plan, bool(exclude)))
            return None
        return plan

    def _finish(self) -> TrainResult:
        self.result.step, self.result.tokens_seen = self.state.step, self.state.tokens_seen
        return self.result

    # -- model and state ----------------------------------------------------------------------
    def _restore_rng(self) -> None:
        saved = len(self.state.rng)
        if not self.state.restore_rng(self.device, self.info) and saved and self.cfg.model.dropout:
            self.reporter.warn(
                f"world size changed ({saved} → {self.info.world_size}): dropout random "
                "numbers are reseeded, so the run is not bit-identical to an unchanged one"
            )

    def _model(self, start: StartPoint) -> torch.nn.Module:
        dtype = self.precision.autocast_dtype
        return prepare_model(self.cfg, start, self.device, self.info, dtype, self.reporter)

    def _save(self, plan: RunPlan, run_config: dict[str, Any], *, complete: bool) -> None:
        """A checkpoint of the current state (collective; rank 0 writes, or under FSDP every
        rank writes its shards and rank 0 commits them: train/sharded_checkpoint.py)."""
        assert self.ctx is not None
        ctx, state, info = self.ctx, self.state, self.info
        plan.complete = complete
        state.run, state.config = plan, run_config
        weights, osd, tmp = collect_for_save(
            ctx.model, ctx.optimizer, state, info, self.device, self.ckpt_dir
        )
        # rank 0 writes (or commits); every rank learns how it went (a full disk must not leave
        # the others waiting in the next step's collectives until the timeout)
        run_on_rank0(info, lambda: self._write_checkpoint(plan, weights, osd, complete, tmp))

    def _write_checkpoint(
        self,
        plan: RunPlan,
        weights: dict[str, Any],
        osd: dict[str, Any],
        complete: bool,
        tmp: Path | None,
    ) -> None:
        """Rank 0's part of ``_save``: the files, rotation and (at a run's end) its records."""
        assert self.ctx is not None
        ctx, state = self.ctx, self.state
        scaler = ctx.scaler.state_dict() if ctx.scaler.is_enabled() else None
        if tmp is not None:
            state.layout.update(files=shard_files(tmp), grad_scaler=scaler)
        elif scaler is not None:
            osd["grad_scaler"] = scaler
        before = state.seen, state.ledger, state.eval_subsets
        state.created = utc_iso()
        state.run_summary = None
        try:
            if complete:
                budget = self.cfg.train.forgetting_eval_tokens
                close_run(self.cfg, self.opts, self.ident, state, plan, budget)
            ref = ckpt_io.save_checkpoint(
                self.ckpt_dir,
                state.step,
                model_state=weights,
                optimizer_state=osd,
                train_state=state,
                tmp=tmp,
            )
        except BaseException:
            state.seen, state.ledger, state.eval_subsets = before  # the run is not durable
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.result.checkpoint = str(ref.path)
        self.reporter.checkpoint_saved(str(ref.path), state.step)
        protect = {plan.start_step} if not complete else set()
        keep = self.cfg.train
        ckpt_io.rotate_checkpoints(
            self.ckpt_dir, keep.keep_checkpoints, protect, self.reporter.warn,
            keep_runs=keep.keep_run_checkpoints,
        )  # fmt: skip
        if complete:
            clean_ledger(self.cfg, state.ledger or [])
            write_records(self.ckpt_dir, state.seen, state.run_summary)

    def _matrix_row(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """The forgetting matrix's row of the latest checkpoint written (collective)."""
        return forgetting_row(
            model, self.state, self.info, self.device, self.precision.autocast,
            self.cfg, self.opts, self.ident, self.reporter,
        )  # fmt: skip

    # -- one run ------------------------------------------------------------------------------
    def _train_plan(
        self, plan: RunPlan, run_train: TrainConfig, ident: Any, *, resumed: bool
    ) -> bool:
        """Train (the rest of) ``plan``; True when it completed."""
        assert self.ctx is not None
        data, eval_sets = open_plan_data(
            self.cfg, self.opts, self.info, self.state.seen, plan, ident
        )
        self.ctx.eval_sets = eval_sets
        if not resumed and plan.anchor_pool is not None:
            self.state.anchor = plan.anchor_pool  # saved with the run's checkpoints
        changed = apply_hyperparams(self.ctx.optimizer, run_train)
        if changed and not resumed and self.loaded_optimizer:
            self.reporter.message(
                "optimizer settings changed at this run boundary (moments kept): "
                + "; ".join(changed)
            )
        run_config = self.cfg.to_json_dict()
        run_config["train"] = run_train.model_dump(mode="json")
        self.reporter.run_started(
            {
                "run_id": plan.run_id,
                "resumed": resumed,
                "shards": [", ".join(plan.shard_files[s].values()) for s in plan.shard_ids],
                "replay_rows": plan.replay_rows,
                "anchor_rows": plan.anchor_rows,
                **plan.filter_counts(),
                "rows": plan.n_rows,
                "epochs": plan.epochs,
                "steps_done": plan.steps_done,
                "total_steps": plan.total_steps,
                "total_tokens": plan.total_tokens,
                "step": self.state.step,
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
            signal = outcome.reason == "signal"
            self.result.status = "signal" if signal else "bounded"
            self.result.stopped_by = self.stop.name if signal else outcome.reason
            self.result.exit_code = self.stop.exit_code if signal else 0
            self.reporter.warn(
                f"stopped by {self.result.stopped_by} at step {self.state.step}; run "
                f"{plan.short_id} is pending ({plan.steps_done}/{plan.total_steps} steps) and "
                "continues next time"
            )
            return False
        self._save(plan, run_config, complete=True)
        self.result.status = "trained"
        state = self.state
        summary = run_summary(plan, state.step, state.last_loss, state.last_val_loss)
        summary["seconds"] = time.monotonic() - started
        summary["forgetting"] = self._matrix_row(self.ctx.model)
        self.result.runs.append(summary)
        self.reporter.run_finished(summary)
        return True
