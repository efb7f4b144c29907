"""Model and optimizer state in and out of a (possibly sharded or wrapped) model.

Tensors are keyed by parameter name with their full shapes, in both checkpoint
layouts (the single files of one process and DDP, the shards of FSDP:
train/sharded_checkpoint.py), so a run saved under FSDP resumes under DDP, on
one process, or on another number of ranks — and ``allllm export`` reads them
without any distributed setup. ``parallelize`` never renames a parameter, so
the names are the model's own under every combination of checkpointing,
compile, DDP and FSDP. A sharded model loads single-file state from rank 0 by
broadcast: no other rank reads the files or holds the whole state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from allllm.errors import CheckpointError

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full weights (CPU), gathered from shards when the model is sharded (collective)."""
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (collective when sharded)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def check_fit(
    own: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]], where: str
) -> None:
    """Missing/unexpected keys or wrong shapes (full shapes, by name) as one clear error."""
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    wrong = [k for k in own if k in saved and tuple(own[k]) != tuple(saved[k])]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {tuple(saved[k])}, the model needs {tuple(own[k])}")
        raise CheckpointError(f"{where}: weights do not fit the model: {'; '.join(parts)}")


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Full shape of every tensor by name (a DTensor's shape is its global one)."""
    return {k: tuple(v.shape) for k, v in state.items()}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load full weights; missing/unexpected keys or wrong shapes are one clear error."""
    check_fit(shapes(model.state_dict()), shapes(state), where)
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def broadcast_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor] | None, where: str
) -> None:
    """Load rank 0's full weights ``state`` into a sharded model (collective; the other ranks
    pass None and receive their shards one tensor at a time: none ever holds the whole)."""
    if state is not None:
        check_fit(shapes(model.state_dict()), shapes(state), where)
    set_model_state_dict(
        model,
        state or {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )


def _by_index(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """The name-keyed full state as torch's own index-keyed ``optimizer.state_dict()`` form."""
    names = {id(p): n for n, p in model.named_parameters()}
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"{len(saved_groups)} parameter groups saved, the optimizer has "
            f"{len(optimizer.param_groups)}"
        )
    by_index: dict[int, Any] = {}
    groups, index = [], 0
    for group, saved in zip(optimizer.param_groups, saved_groups):
        here = [names[id(p)] for p in group["params"]]
        if here != list(saved["params"]):
            raise ValueError("the saved parameter groups hold other parameters")
        for name in here:
            if name in state["state"]:
                by_index[index] = state["state"][name]
            index += 1
        groups.append({**saved, "params": list(range(index - len(here), index))})
    return {"state": by_index, "param_groups": groups}


def check_optimizer_fit(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], where: str
) -> None:
    """CheckpointError when a name-keyed optimizer state does not fit ``optimizer``."""
    try:
        _by_index(model, optimizer, state)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{where}: optimizer state does not fit this model ({type(exc).__name__}: {exc})",
            "start fresh optimizer moments with --reset-optimizer",
        ) from None


def load_optimizer_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any] | None,
    where: str,
) -> None:
    """Load the optimizer state saved by :func:`optimizer_state`.

    Unsharded models (one process, DDP) take the loaded tensors as they are
    (``optimizer.load_state_dict``); ``set_optimizer_state_dict`` would first build
    a throw-away state with a dummy step and copy into it (10x slower for 125M on CPU).
    A sharded model (collective) takes rank 0's ``state`` by broadcast, one tensor at a
    time; the other ranks pass None. Rank 0 checks the fit first (:func:`check_optimizer_fit`,
    before the collective, so a misfit never leaves the other ranks waiting).
    """
    from torch.distributed.tensor import DTensor

    inner = model
    try:
        if any(isinstance(p, DTensor) for p in inner.parameters()):
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_optimizer_state_dict(inner, optimizer, state or {}, options=options)
        else:
            assert state is not None
            optimizer.load_state_dict(_by_index(inner, optimizer, state))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{where}: optimizer state does not fit this model ({type(exc).__name__}: {exc})",
            "start fresh optimizer moments with --reset-optimizer",
        ) from None


def non_finite_weights(weights: dict[str, torch.Tensor]) -> str:
    """The first tensors holding NaN or inf ("" when all are finite): no checkpoint may hold them."""
    bad = [k for k, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def non_finite_local(model: torch.nn.Module) -> list[str]:
    """Parameters whose local part (this rank's shard under FSDP) holds NaN or inf."""
    from torch.distributed.tensor import DTensor

    bad = []
    for name, p in model.named_parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        if t.is_floating_point() and not torch.isfinite(t.detach()).all():
            bad.append(name)
    return bad
