"""``train --dry-run``: the plan, and how long and how much memory it takes, from measured steps.

A few micro-batches of the run's real rows go forward and backward (no
optimizer step, gradients dropped), so the estimate reflects this machine,
this model and this precision. Nothing is written and no weight changes.
Beside it, the memory plan (:mod:`allllm.train.memory_plan`) counts what the run
needs per device from the config alone, so it can plan a GPU that is not here
(``--device-memory``) and is reported even with no data to measure on.
"""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any

import torch

from allllm.config import Config
from allllm.train.loop import LoopContext
from allllm.train.memory_plan import MemoryPlan, plan_memory
from allllm.train.options import TrainOptions
from allllm.train.run_data import RunData
from allllm.train.run_plan import RunPlan

if TYPE_CHECKING:
    from allllm.data.registry import TokenizerIdentity
    from allllm.train.session import Session
    from allllm.train.start import StartPoint

MEASURED_MICRO_STEPS = 3


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_memory_plan(
    cfg: Config,
    opts: TrainOptions,
    world_size: int,
    device: torch.device,
    precision: str | None = None,
) -> MemoryPlan:
    """The memory plan of this run per device, at its world size and config.

    The device it plans for: this run's GPU when it has one (its resolved
    ``precision``; its capacity unless ``--device-memory`` says otherwise); with
    ``--device-memory`` on a machine without a GPU, a GPU of that size — unless
    ``--device`` names cpu or mps — with ``train.precision`` as it resolves on a GPU
    (``auto``: bf16 autocast); else this CPU (or MPS), whose capacity is unknown.
    """
    kind, capacity = device.type, opts.device_memory
    if kind == "cuda":
        capacity = capacity or torch.cuda.get_device_properties(device).total_memory
    elif capacity is not None and opts.device in (None, "auto"):
        kind, precision = "cuda", None
    else:
        precision = None
    return plan_memory(
        cfg.model,
        cfg.train,
        seq_len=cfg.data.seq_len,
        world_size=world_size,
        device_type=kind,
        device_memory=capacity,
        precision=precision,
    )


def nothing_to_train_report(session: Session) -> dict[str, Any]:
    """The dry-run report when there is nothing to train: no model was built, but the
    memory plan of the configured run still answers "will it fit"."""
    plan = run_memory_plan(
        session.cfg,
        session.opts,
        session.info.world_size,
        session.device,
        session.precision.name,
    ).to_dict()
    return {"pending": None, "new": None, "step": session.state.step, "memory_plan": plan}


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
    plan = run_memory_plan(
        session.cfg, session.opts, ctx.info.world_size, ctx.device, ctx.precision.name
    ).to_dict()
    report: dict[str, Any] = {"pending": None, "new": None, "step": state.step, "memory_plan": plan}
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
        report["estimate"]["memory_plan"] = plan
        data.dataset.close()
    return report
