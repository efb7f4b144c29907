"""The optimizer-step loop of one run: batches, accumulation, AMP, clipping, eval, checkpoints.

One global batch of ``batch_size`` rows is one optimizer step. Rank ``k`` of
``W`` trains ``batch[k::W]`` in micro-batches of ``micro_batch_size``; the loss
of every micro-batch is its token-loss sum divided by the global batch's count
of valid targets (times W, since DDP averages gradients), so padding,
accumulation and world size never change the update (docs/design.md: tokens, documents, rows). The final
partial batch of an epoch is trained, not dropped.

A step whose loss or gradients are not finite is skipped on every rank (no
update; its batch is consumed and step, LR and sampler advance, so a resume stays
exact); ``train.max_skipped_steps`` of them in a row stop the run with one line
and no checkpoint (docs/design.md: non-finite steps).

Gradients are clipped by their global norm, the same under one process, DDP and
FSDP2 (:mod:`allllm.train.grad_clip`). ``tokens_per_s`` of a step is the job's
tokens over the wall time since the previous step ended, checkpoint saves and
evals left out (they would count against the step after them); ``mfu`` is per
device (:func:`allllm.train.metrics.step_mfu`).

Stops happen only between optimizer steps: a checkpoint then holds everything
to continue bit for bit — the sampler position, optimizer moments, the RNG of
every rank — and the learning rate is a pure function of the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from allllm.config import TrainConfig
from allllm.data.sampler import RowSampler
from allllm.errors import TrainingError
from allllm.train.distributed import DistInfo, all_reduce_max, all_reduce_sum
from allllm.train.grad_clip import clip_gradients
from allllm.train.metrics import step_mfu
from allllm.train.parallelize import gradient_sync
from allllm.train.precision import Precision
from allllm.train.run_data import RunData
from allllm.train.run_plan import RunPlan
from allllm.train.schedule import legacy_warmup, lr_at
from allllm.train.state import TrainState
from allllm.train.validation import evaluate_rows
from allllm.util.faults import fault_point, inject_nan

#: the throughput window's clock (a test swaps in a fake one)
_clock: Callable[[], float] = time.perf_counter


class StepReporter(Protocol):
    def warn(self, text: str) -> None: ...
    def step(self, record: dict[str, Any]) -> None: ...
    def evaluated(self, record: dict[str, Any]) -> None: ...


@dataclass
class Bounds:
    """Per-invocation limits (``--max-steps``, ``--max-tokens``, ``--max-time``)."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    tokens: int = 0

    def reached(self) -> str | None:
        if self.max_steps is not None and self.steps >= self.max_steps:
            return f"--max-steps {self.max_steps}"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"--max-tokens {self.max_tokens}"
        if self.max_time is not None and time.monotonic() - self.started >= self.max_time:
            return f"--max-time {self.max_time:g}s"
        return None


@dataclass
class LoopContext:
    """Everything the loop needs that outlives one run; ``state`` is what it advances."""

    model: torch.nn.Module  # parallelized in place (DDP / FSDP / compiled blocks)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    device: torch.device
    info: DistInfo
    bounds: Bounds
    stop_requested: Callable[[], bool]
    eval_sets: list[tuple[str, Any, np.ndarray]]  # (name, dataset, rows): fixed eval rows
    flops_per_token: float
    peak_flops: float | None
    log_metrics: Callable[[dict[str, Any]], None]
    reporter: StepReporter | None
    state: TrainState = field(default_factory=TrainState)  # step, tokens, losses, the run


@dataclass
class LoopOutcome:
    """Why the loop returned."""

    finished: bool  # the run trained its last step
    reason: str | None = None  # the bound or signal that stopped it early


def _micro_batches(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i : i + size] for i in range(0, rows.size, size)]


def train_run(
    ctx: LoopContext,
    plan: RunPlan,
    data: RunData,
    train: TrainConfig,
    *,
    save: Callable[[], None],
    checkpoint_every: int,
    eval_every: int,
) -> LoopOutcome:
    """Train ``plan`` from its stored sampler position until it ends or a bound/signal stops it."""
    info = ctx.info
    sampler = RowSampler(
        plan.n_rows,
        plan.batch_size,
        seed=plan.order_seed,
        rank=info.rank,
        world_size=info.world_size,
        epochs=plan.epochs,
    )
    if plan.sampler:
        sampler.load_state_dict(plan.sampler)
    model, optimizer, state = ctx.model, ctx.optimizer, ctx.state
    state.run = plan
    if plan.steps_done == 0:  # a new run's validation loss is measured by the run itself
        state.last_val_loss = None
    warmup = plan.warmup_steps
    if warmup is None:
        warmup = legacy_warmup(train.warmup_steps, plan.total_steps)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    window_start = _clock()
    save_due = False
    while not sampler.finished:
        bound = ctx.bounds.reached()
        # one collective decides for every rank (max_time and signals differ between ranks)
        stop, bounded = all_reduce_sum(
            [float(ctx.stop_requested()), float(bound is not None)], info, ctx.device
        )
        reason = "signal" if stop else (bound or "--max-time" if bounded else None)
        if reason:
            save()
            return LoopOutcome(finished=False, reason=reason)
        batch = sampler.next_global_batch()
        assert batch is not None
        mine = data.rows[batch[info.rank :: info.world_size]]
        lr = lr_at(state.step - plan.start_step, plan.total_steps, train, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, targets, tokens = _accumulate(ctx, data, mine, train.micro_batch_size)
        if ctx.scaler.is_enabled():
            ctx.scaler.unscale_(optimizer)
        if inject_nan("train.grad"):
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        fault_point("train.step")
        clip = train.grad_clip if train.grad_clip > 0 else float("inf")
        grad_norm = clip_gradients(params, clip, info, ctx.device)
        skipped = _non_finite(ctx, loss_sum, grad_norm)
        if skipped:
            if ctx.scaler.is_enabled():
                ctx.scaler.update()
        else:
            ctx.scaler.step(optimizer)
            ctx.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        too_many = _count_skip(plan, skipped, train.max_skipped_steps)
        if skipped and plan.skipped_in_row == 1 and ctx.reporter:  # once a streak
            ctx.reporter.warn(
                f"step {state.step + 1}: non-finite loss or gradient — skipped, no update "
                f"({plan.skipped_steps} this run; metrics.jsonl marks each one)"
            )
        state.step += 1
        state.tokens_seen += tokens
        ctx.bounds.steps += 1
        ctx.bounds.tokens += tokens
        plan.steps_done += 1
        plan.tokens_done += tokens
        plan.sampler = sampler.state_dict()
        step_loss = loss_sum / max(1, targets)
        if not skipped:
            state.last_loss = step_loss
        now = _clock()
        tok_s = tokens / max(now - window_start, 1e-9)
        window_start = now
        record = {
            "step": state.step,
            "tokens": state.tokens_seen,
            "loss": step_loss if math.isfinite(step_loss) else None,
            "skipped": skipped,
            "lr": lr,
            "time": time.time(),
            "run_id": plan.run_id,
            "run_step": plan.steps_done,
            "run_steps": plan.total_steps,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            "tokens_per_s": tok_s,
            "tokens_per_s_per_device": tok_s / info.world_size,
        }
        if ctx.peak_flops:
            record["mfu"] = step_mfu(tok_s, info.world_size, ctx.flops_per_token, ctx.peak_flops)
        last = sampler.finished
        if (eval_every and state.step % eval_every == 0) or last:
            record.update(run_evals(ctx, train.micro_batch_size))
            window_start = _clock()  # the eval is not the next step's training time
        if info.is_main:
            ctx.log_metrics(record)
        if ctx.reporter:
            ctx.reporter.step(record)
        if too_many:
            raise _too_many_skipped(plan, state.step)
        save_due = save_due or state.step % checkpoint_every == 0
        # not in the middle of a streak of skipped steps: if it grows to the limit, the run
        # stops and resumes from before it (a signal or bound still saves, at the loop top)
        if not last and save_due and plan.skipped_in_row == 0:
            save()
            save_due = False
            window_start = _clock()  # nor is the checkpoint
    return LoopOutcome(finished=True)


def _non_finite(ctx: LoopContext, loss_sum: float, grad_norm: float) -> bool:
    """Whether this step must be skipped, decided by every rank together.

    The loss is already a global sum and ``grad_norm`` the global norm
    (:func:`allllm.train.grad_clip.grad_norm`: a non-finite value on any shard makes it
    non-finite everywhere); the flag is still all-reduced, since under DDP a fault on one
    rank after the gradient reduction reaches only that rank. With fp16 the grad scaler
    skips overflowing steps itself while it calibrates: those are not counted here.
    """
    bad = not math.isfinite(loss_sum)
    if not bad and not ctx.scaler.is_enabled():
        bad = not math.isfinite(grad_norm)
    return bool(all_reduce_max(int(bad), ctx.info, ctx.device))


def _count_skip(plan: RunPlan, skipped: bool, limit: int) -> bool:
    """Count a skipped step; True once ``limit`` (0: never) of them came in a row."""
    if not skipped:
        plan.skipped_in_row = 0
        return False
    plan.skipped_steps += 1
    plan.skipped_in_row += 1
    return bool(limit) and plan.skipped_in_row >= limit


def _too_many_skipped(plan: RunPlan, step: int) -> TrainingError:
    """The one-line stop: nothing of the streak is saved or recorded."""
    first = step - plan.skipped_in_row + 1
    return TrainingError(
        f"run {plan.short_id} stopped: {plan.skipped_in_row} optimizer steps in a row "
        f"(steps {first}–{step}) had a non-finite loss or gradient; no checkpoint, seen "
        "record or runs.jsonl line was written for them",
        "check this run's data; train again to retry from the latest checkpoint, or drop "
        "the run with --abandon-pending and lower train.lr first (a pending run keeps its "
        "own settings); train.max_skipped_steps sets the limit (0 = never stop)",
    )


def _accumulate(
    ctx: LoopContext, data: RunData, rows: np.ndarray, micro_batch_size: int
) -> tuple[float, int, int]:
    """Forward/backward over this rank's rows; returns global (loss sum, targets, tokens)."""
    info, device = ctx.info, ctx.device
    chunks = [data.dataset.fetch(mb) for mb in _micro_batches(rows, micro_batch_size)]
    local_targets = sum(int((lengths - 1).clamp(min=0).sum()) for _, lengths in chunks)
    local_tokens = sum(int(lengths.sum()) for _, lengths in chunks)
    global_targets, global_tokens = all_reduce_sum(
        [float(local_targets), float(local_tokens)], info, device
    )
    denom = max(global_targets, 1.0) / info.world_size
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    loss_total = torch.zeros((), dtype=acc_dtype, device=device)  # summed on the device:
    # converting each micro-batch's loss to a Python float would sync a GPU every time.
    # Every rank runs the same number of micro-steps: under FSDP each forward and backward is a
    # collective, and in a final partial batch some ranks have fewer rows (or none). The extra
    # micro-steps run a dummy row whose loss has no targets, so they add nothing.
    n_micro = all_reduce_max(len(chunks), info, device)
    dummy = (
        torch.zeros((1, data.dataset.seq_len), dtype=torch.long),
        torch.ones(1, dtype=torch.long),
    )
    chunks += [dummy] * (n_micro - len(chunks))
    pin = device.type == "cuda"
    for i, (ids, lengths) in enumerate(chunks):
        if pin:
            ids, lengths = ids.pin_memory(), lengths.pin_memory()
        ids = ids.to(device, non_blocking=True)
        lengths = lengths.to(device, non_blocking=True)
        # the no-sync block holds the backward too: FSDP2 reads its flag when gradients reduce
        with gradient_sync(ctx.model, sync=i == len(chunks) - 1):
            with ctx.precision.autocast():
                loss_sum, _count = ctx.model(ids, lengths)
                loss = loss_sum / denom
            ctx.scaler.scale(loss).backward()
        loss_total += loss_sum.detach().to(acc_dtype)
    (loss_global,) = all_reduce_sum([float(loss_total)], info, device)
    return loss_global, int(global_targets), int(global_tokens)


def run_evals(ctx: LoopContext, micro_batch_size: int) -> dict[str, Any]:
    """Validation losses on the fixed eval sets (no training RNG is touched)."""
    out: dict[str, Any] = {}
    for name, dataset, rows in ctx.eval_sets:
        if rows.size == 0:
            continue
        total, count = evaluate_rows(
            ctx.model,
            dataset,
            rows,
            micro_batch_size=micro_batch_size,
            device=ctx.device,
            autocast=ctx.precision.autocast,
            info=ctx.info,
        )
        if count:
            out[name] = total / count
    if "val_loss" in out:
        ctx.state.last_val_loss = out["val_loss"]
    if out and ctx.reporter:
        ctx.reporter.evaluated({"step": ctx.state.step, **out})
    return out
