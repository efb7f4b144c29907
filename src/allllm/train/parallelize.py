"""How a model is made ready to train: activation checkpointing, compilation, data parallelism.

:func:`parallelize` applies them in torchtitan's order — activation
checkpointing per block, ``torch.compile`` per block, then FSDP2
``fully_shard`` (per block, then the root) or DDP — to the model in place, so
the model class knows nothing of any of them. None of them renames a
parameter: checkpointing replaces a block's ``forward`` with one that
recomputes it in the backward pass, compilation uses ``Module.compile`` (no
``_orig_mod.`` wrapper), DDP is the composable ``replicate`` (no ``module.``
prefix) and ``fully_shard`` keeps names. A checkpoint saved under any
combination therefore loads under any other, which README allows between runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from allllm.config import TrainConfig
from allllm.model.kv_cache import KVCache
from allllm.train.distributed import DistInfo

#: model methods that run outside ``forward`` and must unshard parameters under FSDP2
FSDP_FORWARD_METHODS = ("logits", "decode_step")


def checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block`` in the backward pass instead of keeping its activations.

    Only where it pays: in training mode, with gradients on and no KV cache
    (the cache is mutated by a forward, so it must never run twice). The RNG
    state is replayed, so dropout draws the same numbers in the recompute.
    """
    inner: Callable[..., Any] = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        cached = any(isinstance(a, KVCache) for a in (*args, *kwargs.values()))
        if block.training and torch.is_grad_enabled() and not cached:
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    block.forward = forward  # type: ignore[method-assign]


def parallelize(
    model: nn.Module,
    train: TrainConfig,
    info: DistInfo | None = None,
    device: torch.device | None = None,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Apply ``train``'s activation checkpointing and compile, then FSDP2 or DDP; return ``model``.

    ``model`` must have ``blocks`` (the decoder layers). Data parallelism is
    applied only in a process group of more than one rank (``info``); the
    model object is changed in place and returned, and its parameter names
    never change. ``param_dtype``: the autocast dtype of mixed precision (None: fp32),
    which FSDP2 gathers parameters and reduces gradients in (:func:`fsdp_mixed_precision`).
    DDP reduces into its buckets in place (``gradient_as_bucket_view``): no second copy
    of every gradient (+4 bytes a parameter, 11 GB for phi-2).
    """
    info = info or DistInfo()
    blocks = list(model.blocks)  # type: ignore[attr-defined]
    if train.activation_checkpointing:
        for block in blocks:
            checkpoint_block(block)
    if train.compile:
        for block in blocks:
            block.compile()
    if not info.enabled:
        return model
    if train.fsdp:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        policy = fsdp_mixed_precision(param_dtype)
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        for name in FSDP_FORWARD_METHODS:
            if hasattr(model, name):
                register_fsdp_forward_method(model, name)
        return model
    from torch.distributed._composable.replicate import replicate

    device = device or torch.device("cpu")
    ids = [device.index] if device.type == "cuda" else None
    replicate(model, device_ids=ids, gradient_as_bucket_view=True)
    return model


def fsdp_mixed_precision(param_dtype: torch.dtype | None) -> Any:
    """FSDP2's policy for an autocast dtype: gather parameters in it and reduce gradients in
    it (bf16: half the traffic of fp32 both ways; the sharded master weights, the optimizer
    and the gradients it steps on stay fp32). fp16 reduces in fp32, where sums of many
    ranks' gradients could overflow; no autocast (fp32): the default policy."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if param_dtype is None or param_dtype == torch.float32:
        return MixedPrecisionPolicy()
    reduce = param_dtype if param_dtype == torch.bfloat16 else torch.float32
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient reduction of accumulation micro-steps (DDP and FSDP2 alike).

    The block must hold both the forward and the backward: DDP reads the flag
    when the forward starts, FSDP2 when the backward reduces.
    """
    if sync or not hasattr(model, "set_requires_gradient_sync"):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
