"""``train --dry-run``: the plan, and how long and how much memory it takes, from measured steps.

A few micro-batches of the run's real rows go forward and backward (no
optimizer step, gradients dropped), so the estimate reflects this machine,
this model and this precision. Nothing is written and no weight changes.
"""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any

import torch

from allllm.config import Config
from allllm.train.loop import LoopContext
from allllm.train.run_data import RunData
from allllm.train.run_plan import RunPlan

if TYPE_CHECKING:
    from allllm.data.registry import TokenizerIdentity
    from allllm.train.session import Session
    from allllm.train.start import StartPoint

MEASURED_MICRO_STEPS = 3


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def estimate_run(
    ctx: LoopContext,
    target: RunPlan,
    data: RunData,
    cfg: Config,
    pending: RunPlan | None,
    new: RunPlan | None,
) -> dict[str, Any]:
    """Seconds per step and in total, and memory, measured on ``target``'s rows."""
    mb = cfg.train.micro_batch_size
    rows = data.rows[: mb * (MEASURED_MICRO_STEPS + 1)]
    model = ctx.model
    model.train()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = []
    for i in range(0, rows.size, mb):
        ids, lengths = data.dataset.fetch(rows[i : i + mb])
        ids, lengths = ids.to(ctx.device), lengths.to(ctx.device)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        t0 = time.perf_counter()
        with ctx.precision.autocast():
            loss_sum, count = model(ids, lengths)
        (loss_sum / count.clamp(min=1)).backward()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        times.append(time.perf_counter() - t0)
    ctx.optimizer.zero_grad(set_to_none=True)
    measured = times[1:] or times  # the first call warms caches up
    per_micro = sorted(measured)[len(measured) // 2] if measured else 0.0
    micro_per_step = -(-cfg.train.batch_size // (mb * ctx.info.world_size))
    per_step = per_micro * micro_per_step
    steps_left = sum(p.total_steps - p.steps_done for p in (pending, new) if p is not None)
    n_params = sum(p.numel() for p in model.parameters())
    static = n_params * (4 + 4 + 8)  # fp32 weights, gradients, AdamW moments
    if ctx.device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(ctx.device)) + n_params * 8
        where = "GPU"
    else:
        peak = _rss_bytes() + n_params * 8  # the AdamW moments appear at the first real step
        where = "RAM (peak RSS)"
    return {
        "seconds_per_step": per_step,
        "steps": steps_left,
        "seconds_total": per_step * steps_left,
        "tokens_per_s": (mb * data.dataset.seq_len / per_micro) * ctx.info.world_size
        if per_micro
        else None,
        "parameters": n_params,
        "static_bytes": static,
        "peak_bytes": peak,
        "memory_where": where,
    }


def dry_run_report(
    session: Session,
    start: StartPoint,
    ident: TokenizerIdentity,
    planned: RunPlan | None = None,
) -> dict[str, Any]:
    """What ``train`` would do: the pending run, the new run, and their measured estimate.

    ``planned``: the new run, when the session planned it already (no pending run).
    """
    from allllm.train.distributed import run_on_rank0
    from allllm.train.optim import hyperparam_changes
    from allllm.train.run_data import open_plan_data

    ctx, state = session.ctx, session.state
    assert ctx is not None
    report: dict[str, Any] = {"pending": None, "new": None, "step": state.step}
    pending = start.pending
    if pending is not None:
        report["pending"] = {**pending.to_dict(), **pending.filter_counts()}
    exclude = set(pending.shard_ids) if pending else None
    new_plan = planned or run_on_rank0(
        session.info, lambda: session._plan_new(ident, state.step, exclude)
    )
    if new_plan is not None:
        report["new"] = {**new_plan.to_dict(), **new_plan.filter_counts()}
        if session.loaded_optimizer:
            report["optimizer_changes"] = hyperparam_changes(ctx.optimizer, session.cfg.train)
    target = pending or new_plan
    if target is not None:
        data, _evals = open_plan_data(
            session.cfg, session.opts, session.info, state.seen, target, ident
        )
        report["estimate"] = estimate_run(ctx, target, data, session.cfg, pending, new_plan)
        data.dataset.close()
    return report
