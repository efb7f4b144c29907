"""The global gradient norm and clipping, the same under one process, DDP and FSDP2.

``torch.nn.utils.clip_grad_norm_`` on FSDP2's DTensor gradients returns a
rank-local norm on some torch versions (2.5–2.9) and clips every rank by its
own shard, so ``grad_norm`` and the update depended on the world size. Here the
norm is computed the same way on every version: the squared L2 norm of this
rank's own gradient tensors (a DTensor's local shard), summed over ranks only
when the parameters are sharded (under DDP or one process every rank already
holds the full gradients: summing would count them ``W`` times), then the root.
Gradients are scaled by ``min(1, max_norm / (norm + 1e-6))``, as
``clip_grad_norm_`` does. A non-finite gradient on any shard makes the norm
non-finite on every rank, so the loop's skip decision needs nothing more.
"""

from __future__ import annotations

import math

import torch

from allllm.train.distributed import DistInfo, all_reduce_sum

EPS = 1e-6  # what clip_grad_norm_ adds to the norm before dividing


def is_sharded(params: list[torch.nn.Parameter]) -> bool:
    """Whether the parameters are FSDP2 shards (DTensors): each rank holds a part of each."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


def local_tensor(grad: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``grad``: a DTensor's local shard (same storage), else ``grad``."""
    return grad.to_local() if hasattr(grad, "to_local") else grad


def grad_norm(params: list[torch.nn.Parameter], info: DistInfo, device: torch.device) -> float:
    """The L2 norm of all gradients of ``params`` across every rank (a collective if sharded)."""
    local = [local_tensor(p.grad) for p in params if p.grad is not None]
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    if local:
        norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in local])
        squares = float(norms.to(acc).square().sum())  # one device sync for every tensor
    else:
        squares = 0.0
    if is_sharded(params):  # every rank must call: sharding is the same on all of them
        (squares,) = all_reduce_sum([squares], info, device)
    return math.sqrt(squares) if squares >= 0 else float("nan")


def clip_gradients(
    params: list[torch.nn.Parameter], max_norm: float, info: DistInfo, device: torch.device
) -> float:
    """Scale the gradients to at most ``max_norm`` in global L2 norm; return the norm before.

    ``max_norm`` may be ``inf`` (no clipping, the norm is still measured for the
    records and the non-finite check). A non-finite norm leaves the gradients as they are:
    the loop skips that step on every rank.
    """
    norm = grad_norm(params, info, device)
    coef = max_norm / (norm + EPS) if math.isfinite(norm) else 1.0
    if coef < 1.0:
        grads = [local_tensor(p.grad) for p in params if p.grad is not None]
        torch._foreach_mul_(grads, coef)
    return norm
