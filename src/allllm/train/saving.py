"""What a checkpoint save gathers from the ranks before rank 0 commits it (collective).

One process and DDP: the full weights and optimizer state, for rank 0 to write as single
files. FSDP: every rank writes its own shards into a temporary directory named for the
job (train/sharded_checkpoint.py), and the trainer state's ``layout`` lists them; nothing
is gathered whole. Either way no checkpoint may hold NaN or inf weights.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from allllm.errors import TrainingError
from allllm.train import checkpoint as ckpt_io
from allllm.train.distributed import DistInfo, gather_objects, run_on_rank0
from allllm.train.sharded_checkpoint import is_sharded, save_tensors
from allllm.train.state import TrainState
from allllm.train.state_dicts import (
    model_state,
    non_finite_local,
    non_finite_weights,
    optimizer_state,
)


def _not_finite(
    model: torch.nn.Module, weights: dict[str, Any], info: DistInfo, sharded: bool
) -> str:
    if not sharded:  # the full weights (on rank 0: the others hold none)
        return str(run_on_rank0(info, lambda: non_finite_weights(weights)))
    bad = sorted({n for names in gather_objects(non_finite_local(model), info) for n in names})
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def collect_for_save(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    info: DistInfo,
    device: torch.device,
    ckpt_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """(weights, optimizer state, None) to write, or ({}, {}, the shards' directory) under
    FSDP; sets ``state.layout`` and captures every rank's RNG state."""
    sharded = is_sharded(model)
    weights = {} if sharded else model_state(model)
    not_finite = _not_finite(model, weights, info, sharded)
    if not_finite:
        raise TrainingError(
            f"not saving step {state.step}: weights are not finite ({not_finite}); the "
            "latest checkpoint stays the one before",
            "lower train.lr or check this run's data, then train again",
        )
    state.capture_rng(device, info)
    if not sharded:
        state.layout = {"kind": "single"}
        return weights, optimizer_state(model, optimizer), None
    job = f"{os.getpid()}-{time.time_ns()}"  # rank 0's: one name for every rank
    tmp = run_on_rank0(info, lambda: ckpt_io.begin_save(ckpt_dir, state.step, job))
    layout = save_tensors(tmp, model, optimizer)
    state.layout = {"kind": "sharded", "world_size": info.world_size, **layout}
    return {}, {}, tmp
