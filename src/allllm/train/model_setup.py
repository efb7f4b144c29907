"""The model and optimizer a session trains: built, parallelized and restored, in bounded memory.

One process and DDP: every rank builds the model on its device and reads the start
checkpoint's weights one tensor at a time (host memory: one tensor, not the whole file;
the optimizer file is memory-mapped, so the ranks of a node share its pages).

FSDP: every rank builds the model on the meta device and shards it; then the weights
arrive without any rank but 0 ever holding them whole. A sharded checkpoint is read
slice by slice by every rank (train/sharded_checkpoint.py); anything else — a single-file
checkpoint, ``model.init_from`` or a fresh init — is made once on rank 0's CPU and
broadcast tensor by tensor (``broadcast_from_rank0``), which also keeps "2 ranks train
like 1" exact: the initial weights are rank 0's, drawn as one process draws them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from allllm.config import Config
from allllm.errors import CheckpointError
from allllm.train import checkpoint as ckpt_io
from allllm.train.distributed import DistInfo, run_on_rank0
from allllm.train.parallelize import parallelize
from allllm.train.sharded_checkpoint import (
    is_sharded,
    load_optimizer_sharded,
    load_weights_sharded,
    read_full_weights,
)
from allllm.train.state_dicts import (
    broadcast_model_state,
    check_fit,
    check_optimizer_fit,
    load_model_state,
    load_optimizer_state,
    shapes,
)

if TYPE_CHECKING:
    from allllm.train.options import Reporter
    from allllm.train.start import StartPoint


def _layout(start: StartPoint) -> str | None:
    """The start checkpoint's layout kind (None: no checkpoint to start from)."""
    if start.checkpoint is None or start.state is None:
        return None
    return str(start.state.layout["kind"])


def build_model_for(
    cfg: Config, start: StartPoint, device: torch.device, reporter: Reporter
) -> torch.nn.Module:
    """The model a session starts from: the start checkpoint's weights, else
    ``model.init_from``, else fresh weights seeded by ``train.seed``."""
    from allllm.hf.init_from import build_model
    from allllm.model.transformer import empty_model

    if start.checkpoint is not None and start.state is not None:
        model = empty_model(cfg.model, device=device)
        ref = ckpt_io.CheckpointRef(start.checkpoint, start.state.step)
        load_checkpoint_weights(model, ref)
        reporter.message(f"resuming from {ref.path} (step {ref.step})")
        return model
    torch.manual_seed(cfg.train.seed)
    if cfg.model.init_from:
        reporter.message(f"starting from {cfg.model.init_from} (model.init_from)")
    else:
        reporter.message("starting from freshly initialised weights")
    return build_model(cfg.model, device=device)


def prepare_model(
    cfg: Config,
    start: StartPoint,
    device: torch.device,
    info: DistInfo,
    param_dtype: torch.dtype | None,
    reporter: Reporter,
) -> torch.nn.Module:
    """The start model, made ready to train (:func:`~allllm.train.parallelize.parallelize`)."""
    if not (info.enabled and cfg.train.fsdp):
        model = build_model_for(cfg, start, device, reporter)
        return parallelize(model, cfg.train, info, device, param_dtype)
    from allllm.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg.model, init=False)
    parallelize(model, cfg.train, info, device, param_dtype)
    model.to_empty(device=device)
    model.rope.reset_tables(cfg.model.max_position_embeddings, device=device)
    if _layout(start) == "sharded":
        assert start.checkpoint is not None and start.state is not None
        load_weights_sharded(model, start.checkpoint)
        reporter.message(f"resuming from {start.checkpoint} (step {start.state.step})")
        return model
    full: list[dict[str, torch.Tensor]] = []

    def rank0_weights() -> None:  # kept on rank 0: only whether it worked is broadcast
        if start.checkpoint is not None and start.state is not None:
            ref = ckpt_io.CheckpointRef(start.checkpoint, start.state.step)
            full.append(ckpt_io.load_model_state(ref))
            reporter.message(f"resuming from {ref.path} (step {ref.step})")
        else:
            full.append(build_model_for(cfg, start, torch.device("cpu"), reporter).state_dict())
        check_fit(own, shapes(full[0]), str(start.checkpoint or "model"))

    own = shapes(model.state_dict())
    run_on_rank0(info, rank0_weights)
    broadcast_model_state(model, full[0] if full else None, str(start.checkpoint or "model"))
    return model


def load_checkpoint_weights(model: torch.nn.Module, ref: ckpt_io.CheckpointRef) -> None:
    """A checkpoint's weights into an unsharded ``model``, one tensor at a time.

    Single layout: each tensor goes from the file straight to the model's device, so host
    memory holds one tensor, not the whole file (8 DDP ranks of phi-2: 11 GB, not 88).
    """
    where = str(ref.path)
    if ref.read_state().layout["kind"] == "sharded":
        load_model_state(model, read_full_weights(ref.path), where)
        return
    from safetensors import safe_open

    own = model.state_dict()
    device = next(iter(own.values())).device
    try:
        with safe_open(
            str(ref.path / ckpt_io.MODEL_FILE), framework="pt", device=str(device)
        ) as fh:
            names = list(fh.keys())
            check_fit(shapes(own), {k: tuple(fh.get_slice(k).get_shape()) for k in names}, where)
            with torch.no_grad():
                for name in names:
                    own[name].copy_(fh.get_tensor(name))
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged file: one clear line
        raise CheckpointError(
            f"{ref.path / ckpt_io.MODEL_FILE}: unreadable ({type(exc).__name__}: {exc})"
        ) from None


def restore_optimizer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    start: StartPoint,
    info: DistInfo,
) -> dict[str, Any] | None:
    """Load the start checkpoint's optimizer state (collective); returns the grad scaler's state.

    Sharded checkpoints are read slice by slice at this world size. A single-file one goes
    to a sharded model by broadcast from rank 0 (no other rank reads or holds it whole),
    and to an unsharded one from each rank's memory-mapped read.
    """
    assert start.checkpoint is not None and start.state is not None
    ref = ckpt_io.CheckpointRef(start.checkpoint, start.state.step)
    where = str(ref.path / ckpt_io.OPTIMIZER_FILE)
    if _layout(start) == "sharded":
        load_optimizer_sharded(model, optimizer, ref.path, start.state.layout)
        return start.state.layout.get("grad_scaler")
    if not is_sharded(model):
        osd = ckpt_io.load_optimizer_state(ref)
        scaler = osd.pop("grad_scaler", None)
        load_optimizer_state(model, optimizer, osd, where)
        return scaler
    held: list[dict[str, Any]] = []

    def rank0_state() -> dict[str, Any] | None:
        osd = ckpt_io.load_optimizer_state(ref)
        scaler = osd.pop("grad_scaler", None)
        check_optimizer_fit(model, optimizer, osd, where)
        held.append(osd)
        return scaler

    scaler_state = run_on_rank0(info, rank0_state)
    load_optimizer_state(model, optimizer, held[0] if held else None, where)
    return scaler_state  # run_on_rank0 handed it to every rank
