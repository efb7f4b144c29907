"""Sharded checkpoints under FSDP: every rank writes and reads only its own part, and no pickle.

Layout (``layout.kind == "sharded"`` in ``trainer_state.json``)::

    model/shard-0000R-model-00001-of-00001.safetensors       rank R's slices of the weights
    optimizer/shard-0000R-model-00001-of-00001.safetensors   its slices of the AdamW moments
    trainer_state.json   as in the single layout, plus the optimizer's param_groups, the grad
                         scaler and every shard file with its size (``layout``)

Tensors go through ``torch.distributed.checkpoint`` with the Hugging Face storage writer
and reader: each file is plain safetensors whose header records where its slices sit in
the full tensor (``DCP_SHARDING_INFO``), and the reader builds its metadata from those
headers. torch's default ``FileSystemReader`` would unpickle a ``.metadata`` file instead;
nothing here ever reads one, so no file of a checkpoint can run code. Optimizer tensors are
keyed ``<parameter>/<state>`` (``blocks.0.attn.qkv.weight/exp_avg``); everything else is JSON.

A sharded checkpoint loads at any world size: DCP reads, for each rank, the parts of the
saved slices that overlap its own (2 ranks → 1 process, 1 → 4, ...). One process and DDP
read it whole (:func:`read_full_weights`), ``export`` and ``generate`` too. Every rank must
see the same directory: multi-node FSDP needs a shared filesystem for its checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from allllm.errors import CheckpointError

MODEL_DIR = "model"
OPTIMIZER_DIR = "optimizer"
SEP = "/"  # never part of a parameter name: splits "<parameter>/<state>"
RESET_HINT = "start fresh optimizer moments with --reset-optimizer, or use an earlier checkpoint"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the model's parameters are FSDP2 shards (DTensors): the sharded layout applies."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns on every load without a process group; one process is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.distributed\.checkpoint")
        yield


def _flat_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    return {f"{name}{SEP}{key}": value for name, per in state.items() for key, value in per.items()}


def _nested_optimizer(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        name, _, what = key.rpartition(SEP)
        out.setdefault(name, {})[what] = value
    return out


def _json_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The param_groups as JSON values (tuples become lists; names stay names)."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def _torch_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Back from JSON: ``betas`` is a pair again (AdamW unpacks it; torch compares it)."""
    return [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in groups]


# -- writing ------------------------------------------------------------------------------------


def save_tensors(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Write this rank's slices of weights and optimizer state under ``tmp`` (collective).

    Returns the JSON part of the layout (param_groups). A failure on any rank raises
    CheckpointError on every rank (DCP gathers the ranks' write results).
    """
    weights = get_model_state_dict(model)
    optim = get_optimizer_state_dict(model, optimizer)
    for sub, tensors in ((MODEL_DIR, weights), (OPTIMIZER_DIR, _flat_optimizer(optim["state"]))):
        writer = HuggingFaceStorageWriter(str(tmp / sub), save_distributed=True)
        try:
            dcp.save(tensors, storage_writer=writer)
        except Exception as exc:
            raise CheckpointError(
                f"cannot save checkpoint {tmp.name}: {_why(exc)}",
                "free space (or fix permissions); the previous checkpoint is intact and is "
                "used next time",
            ) from exc
    return {"param_groups": _json_groups(optim["param_groups"])}


def _why(exc: BaseException) -> str:
    """The first OS error among a DCP failure's per-rank causes, in words."""
    causes = [exc, *getattr(exc, "failures", {}).values()]
    for cause in causes:
        while cause is not None:
            if isinstance(cause, OSError):
                if cause.errno == errno.ENOSPC:
                    return "the disk is full"
                return cause.strerror or str(cause)
            cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def shard_files(tmp: Path) -> dict[str, int]:
    """Every shard file written under ``tmp`` with its size: the layout's completeness record."""
    out = {}
    for sub in (MODEL_DIR, OPTIMIZER_DIR):
        for entry in sorted(os.scandir(tmp / sub), key=lambda e: e.name):
            if entry.name.endswith(".safetensors"):
                out[f"{sub}/{entry.name}"] = entry.stat().st_size
    return out


# -- reading ------------------------------------------------------------------------------------


def _reader(path: Path) -> HuggingFaceStorageReader:
    return HuggingFaceStorageReader(str(path))


def _saved_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Full shape and dtype of every tensor of a sharded part, from the safetensors headers."""
    try:
        meta = _reader(path).read_metadata()
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    return {
        k: (tuple(m.size), m.properties.dtype)  # type: ignore[union-attr]
        for k, m in meta.state_dict_metadata.items()
    }


def _load(tensors: dict[str, Any], path: Path, *, collective: bool) -> None:
    try:
        with _quiet():
            dcp.load(tensors, storage_reader=_reader(path), no_dist=not collective)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {first})") from None


def read_full_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded checkpoint as CPU tensors, read by this process alone."""
    part = ckpt / MODEL_DIR
    tensors = {
        k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in _saved_shapes(part).items()
    }
    _load(tensors, part, collective=False)
    return tensors


def load_weights_sharded(model: torch.nn.Module, ckpt: Path) -> None:
    """Each rank reads the slices of its own FSDP shards (collective)."""
    from allllm.train.state_dicts import check_fit

    part = ckpt / MODEL_DIR
    own = get_model_state_dict(model)
    check_fit(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: s for k, (s, _) in _saved_shapes(part).items()},
        str(ckpt),
    )
    _load(own, part, collective=True)
    set_model_state_dict(model, own)


def load_optimizer_sharded(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path, layout: dict[str, Any]
) -> None:
    """The optimizer state of a sharded checkpoint into ``optimizer`` at this world size.

    Collective when the model is sharded; otherwise this process reads the whole state.
    """
    part = ckpt / OPTIMIZER_DIR
    template = get_optimizer_state_dict(model, optimizer)  # allocates the state to read into
    flat = _flat_optimizer(template["state"])
    saved = _saved_shapes(part)
    groups = layout.get("param_groups")
    ours = [list(g["params"]) for g in template["param_groups"]]
    if not isinstance(groups, list) or [list(g.get("params", [])) for g in groups] != ours:
        raise CheckpointError(
            f"{ckpt}: the saved optimizer's parameter groups do not fit this model", RESET_HINT
        )
    wrong = sorted(set(flat) ^ set(saved)) or [
        k for k in flat if tuple(flat[k].shape) != saved[k][0]
    ]
    if wrong:
        raise CheckpointError(
            f"{ckpt}: optimizer state does not fit this model (e.g. {wrong[0]})", RESET_HINT
        )
    _load(flat, part, collective=is_sharded(model))
    state = {"state": _nested_optimizer(flat), "param_groups": _torch_groups(groups)}
    set_optimizer_state_dict(model, optimizer, state)
