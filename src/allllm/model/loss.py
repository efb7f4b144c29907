"""The causal-LM loss (docs/design.md: tokens, documents, rows) without materialising the logits.

Labels are the row itself (HF convention: position t predicts token t+1);
targets past a row's valid length are ignored. The loss is returned as
``(sum, count)`` so the trainer divides by the count of the *global* batch,
which keeps padding, gradient accumulation and world size out of the result.

The head is the memory hog of training (phi-2: 51200 logits a position, 800
MB of fp32 logits for one 2048-token row, twice that with their gradient).
:func:`linear_cross_entropy` walks the positions in chunks and computes each
chunk's gradient right away, in the forward pass, while its logits exist;
the backward pass only scales the stored gradients. So at no time do more than
one chunk's logits live, and the head's matmul is not recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from allllm.model.sizes import LOSS_CHUNK_ELEMENTS, LOSS_WEIGHT_GRAD_SLICES, loss_chunk_rows

IGNORE_INDEX = -100
# Logit elements per chunk (fp32: 128 MiB): big enough for efficient matmuls.
DEFAULT_CHUNK_ELEMENTS = LOSS_CHUNK_ELEMENTS
# Under autocast the weight gradient's bf16 products come in this many vocab slices (phi-2:
# 64 MiB each, not a 256 MiB [V, H] product per chunk).
WEIGHT_GRAD_SLICES = LOSS_WEIGHT_GRAD_SLICES


def shifted_targets(
    ids: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Targets ``[B, T]`` for ``ids`` ``[B, T]``: ``ids[:, t+1]``, or ``IGNORE_INDEX`` where invalid.

    ``lengths`` ``[B]``: each row's count of valid (leading) positions. ``mask``
    ``[B, T]``: 1 where the position holds a real token (right padding, like HF's
    attention_mask). Either or both may be given; the last position of a row
    never has a target.
    """
    targets = F.pad(ids[:, 1:], (0, 1), value=IGNORE_INDEX)
    if lengths is not None:
        positions = torch.arange(ids.shape[1], device=ids.device)
        lengths = lengths.to(device=ids.device)
        targets = targets.masked_fill(positions[None, :] >= lengths[:, None] - 1, IGNORE_INDEX)
    if mask is not None:
        next_valid = F.pad(mask[:, 1:].to(device=ids.device, dtype=torch.bool), (0, 1), value=False)
        targets = targets.masked_fill(~next_valid, IGNORE_INDEX)
    return targets


def _chunk_rows(vocab: int, chunk_size: int | None) -> int:
    return loss_chunk_rows(vocab, chunk_size)


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (as ``nn.Linear`` would), else the weight's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """One chunk's logits, reduced in fp32 (or float64 when that is the input's dtype)."""
    logits = h @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if bias is not None:
        logits += bias
    return logits


def _accumulate_weight_grad(grad_w: Tensor, grad_c: Tensor, h: Tensor) -> None:
    """``grad_w += grad_c.T @ h`` without a ``[V, H]`` temporary per chunk.

    Same dtype (fp32): one in-place ``addmm_``. Under autocast the product is
    in the compute dtype and the sum in fp32, which no matmul both does on
    every torch ≥ 2.6 and device, so the vocab is cut into
    ``WEIGHT_GRAD_SLICES`` slices: each temporary is a slice of the product,
    its rounding unchanged.
    """
    if grad_c.dtype == grad_w.dtype:
        grad_w.addmm_(grad_c.t(), h)
        return
    vocab = grad_w.shape[0]
    step = -(-vocab // WEIGHT_GRAD_SLICES)
    for start in range(0, vocab, step):
        grad_w[start : start + step] += grad_c[:, start : start + step].t() @ h


class _LinearCrossEntropy(torch.autograd.Function):
    """sum CE(hidden @ weight.T + bias, targets) whose forward also computes the gradients."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_rows: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        acc = torch.promote_types(compute_dtype, torch.float32)
        w = weight.to(compute_dtype)
        b = bias.to(acc) if bias is not None else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=hidden.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(compute_dtype)
                t = targets[start : start + chunk_rows]
                valid = t != IGNORE_INDEX
                safe_t = torch.where(valid, t, 0)[:, None]
                logits = _chunk_logits(h, w, b)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe_t).squeeze(1)
                total += torch.where(valid, lse - picked, 0.0).sum()
                # d(sum CE)/d logits = softmax - one_hot, zero on ignored rows
                grad = logits.sub_(lse[:, None]).exp_()
                grad.scatter_add_(1, safe_t, -torch.ones_like(safe_t, dtype=grad.dtype))
                grad.mul_(valid[:, None])
                if grad_b is not None:
                    grad_b += grad.sum(0)
                grad_c = grad.to(compute_dtype)
                if grad_h is not None:
                    grad_h[start : start + chunk_rows] = grad_c @ w
                if grad_w is not None:
                    _accumulate_weight_grad(grad_w, grad_c, h)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype  # type: ignore[attr-defined]
        ctx.bias_dtype = bias.dtype if bias is not None else None  # type: ignore[attr-defined]
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors  # type: ignore[attr-defined]
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None  # type: ignore[attr-defined]
        db = (grad_b * grad_out).to(ctx.bias_dtype) if grad_b is not None else None  # type: ignore[attr-defined]
        return dh, dw, db, None, None, None


@torch.no_grad()
def _linear_cross_entropy_value(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_rows: int
) -> Tensor:
    compute_dtype = _compute_dtype(hidden, weight)
    acc = torch.promote_types(compute_dtype, torch.float32)
    w = weight.to(compute_dtype)
    b = bias.to(acc) if bias is not None else None
    total = torch.zeros((), dtype=acc, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = _chunk_logits(hidden[start : start + chunk_rows].to(compute_dtype), w, b)
        total += F.cross_entropy(
            logits, targets[start : start + chunk_rows], ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return total


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``(sum, count)`` of the cross-entropy of ``hidden @ weight.T + bias`` against ``targets``.

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]``, ``targets`` ``[N]`` with
    ``IGNORE_INDEX`` for positions without a target. Logits are computed
    ``chunk_size`` rows at a time (default: about 32M logits a chunk) in the
    autocast dtype when autocast is on, and reduced in fp32. ``sum`` is an fp32
    scalar that carries gradients; ``count`` an int64 scalar.
    """
    targets = targets.reshape(-1)
    if hidden.dim() != 2 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} does not match targets {tuple(targets.shape)}"
        )
    count = (targets != IGNORE_INDEX).sum()
    rows = _chunk_rows(weight.shape[0], chunk_size)
    tracks_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not tracks_grad:
        return _linear_cross_entropy_value(hidden, weight, bias, targets, rows), count
    loss = _LinearCrossEntropy.apply(
        hidden, weight, bias, targets, rows, _compute_dtype(hidden, weight)
    )
    return loss, count
