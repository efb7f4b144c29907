"""Will it fit? The memory a training run needs per device, computed from the config alone.

``train --dry-run`` measures memory on the machine at hand, so a laptop cannot plan
a GPU run; this plan needs no device, no torch and no data. Per device it counts:

- **weights, gradients, optimizer** — exact: fp32 master weights and gradients
  (4 bytes a parameter each), AdamW's two fp32 moments plus its 4-byte ``step``
  tensor per parameter tensor. Under FSDP2 (``train.fsdp`` with more than one
  rank) every tensor is cut along its first dimension into ``ceil(d0 / W)`` rows per
  rank (padded), and the plan is rank 0's, which holds a full piece of every tensor.
- **low-precision copies** — autocast casts each block's linear weights (and
  biases) to bf16/fp16 once a forward and keeps them until backward uses them.
  Under FSDP2 they are instead the gathered, unsharded parameters in the autocast
  dtype: the root's (embedding, head), always, and two blocks' (the one computing and
  the one prefetched).
- **activations** at the micro batch — what autograd saves, counted per tensor from
  the architecture of :mod:`allllm.model` (tests/test_memory_plan.py checks the
  count against ``saved_tensors_hooks`` totals), plus the largest temporary next to
  them: the chunked loss's logits and its head-gradient, or one block's backward.
  Under autocast the residual stream stays fp32 (the embedding's output is fp32),
  norms save an fp32 input, and each linear keeps its own bf16 copy of its input.
  With activation checkpointing each block keeps only its input and one block's
  activations are recomputed at a time. Both figures are given; ``activations`` is
  the one the run uses.
- **data-parallel extra** — DDP reduces into its buckets in place
  (``gradient_as_bucket_view``): the gradients *are* the buckets, so nothing is
  counted beyond them (NCCL's own buffers live outside torch's allocator: they are in
  the reserve below). FSDP2: a block's all-gather output buffer, its unsharded
  gradients and the reduce-scatter input.

Precision rule (as :mod:`allllm.train.precision`, without asking a device):
``auto`` is bf16 autocast on CUDA — every GPU of the known-device table has bf16;
an older one takes fp16, which needs the same bytes — and fp32 on CPU/MPS.

What is not counted: the CUDA context, cuBLAS workspaces, NCCL buffers and the
caching allocator's rounding and fragmentation. A plan fits when its total is within
the device memory less a reserve for them (1 GiB on CUDA plus 5% of the device).
The figures are a peak over the step: gradients are counted whole (from the second
micro-step of an optimizer step they all exist; with one micro-step a step the true
peak is lower by up to the gradients). phi-2 (2.78B parameters, seq 2048, micro batch
4, bf16 autocast) comes to ≈ 67.4 GiB on one GPU without activation checkpointing
(activations 21.3 GiB, bf16 copies 4.7 GiB) and ≈ 49.8 GiB with it; FSDP over 8 GPUs:
≈ 26.6 and ≈ 9.0 GiB a GPU. Issue 20's reading of the code said 71 and 47: its
activations (~23 GiB) were guessed where these are counted, its bf16 copies (5.2 GiB)
included the embedding and head, which autocast keeps only inside the loss, and with
checkpointing it left out what remains (3.7 GiB: every block's fp32 input, the loss's
fp32 head gradient and logits chunk). On CPU the activations agree with the tensors
autograd saves and with the measured peak within a few percent
(tests/test_memory_plan.py); on CUDA the kernels save the same tensors (flash attention
keeps q, k, v, the output and an fp32 log-sum-exp), except fp32 with grouped-query
attention, which falls back to the math path (its softmax is counted). Dropout is
counted as its masks (on CPU, attention dropout takes the math path too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from allllm.config import ModelConfig, TrainConfig
from allllm.model.sizes import (
    LOSS_WEIGHT_GRAD_SLICES,
    count_parameters,
    loss_chunk_rows,
    parameter_shapes,
)
from allllm.train.device_memory import KNOWN_DEVICES, parse_device_memory  # noqa: F401 (public)

GIB = 2**30
CUDA_RESERVE = GIB  # CUDA context, cuBLAS workspaces, NCCL: device memory torch does not count
RESERVE_FRACTION = 0.05  # the caching allocator's rounding and fragmentation
LOW_PRECISION = ("bf16-mixed", "fp16-mixed")
FSDP_WORLD_SIZES = (2, 4, 8, 16, 32, 64)  # tried, in order, by the suggestion


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one training setting, and whether they fit (module docstring)."""

    weights: int  # fp32 master weights (sharded by world size under FSDP)
    gradients: int  # fp32 gradients (sharded under FSDP)
    optimizer: int  # AdamW moments (sharded under FSDP) and step tensors
    low_precision_copies: int  # autocast's weight copies, or FSDP's gathered params
    activations: int  # at the micro batch, with the run's activation_checkpointing
    activations_no_ckpt: int
    activations_ckpt: int
    data_parallel_extra: int  # DDP: 0 (buckets are the gradients); FSDP: unshard buffers
    total: int
    world_size: int
    fsdp: bool  # FSDP2 applies: train.fsdp and more than one rank
    device_memory: int | None  # the device's capacity, when known or given
    fits: bool | None  # None: capacity unknown
    suggestion: str | None  # when it does not fit: the setting that makes it fit
    precision: str = "fp32"  # the precision planned for: bf16-mixed | fp16-mixed | fp32
    device_type: str = "cuda"
    micro_batch_size: int = 1
    seq_len: int = 1
    activation_checkpointing: bool = False

    @property
    def usable_memory(self) -> int | None:
        """The device memory a run may fill: its capacity less the reserve (module docstring)."""
        return None if self.device_memory is None else usable(self.device_memory, self.device_type)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usable_memory": self.usable_memory}


@dataclass(frozen=True)
class ActivationBytes:
    """Activation memory of one micro batch: what autograd saves, and the peak beside it."""

    saved: int  # saved for backward at the end of the forward (what saved_tensors_hooks see)
    transient: int  # the largest temporary (loss chunk, head gradient, a recomputed block)

    @property
    def peak(self) -> int:
        return self.saved + self.transient


def usable(device_memory: int, device_type: str) -> int:
    reserve = RESERVE_FRACTION * device_memory + (CUDA_RESERVE if device_type == "cuda" else 0)
    return max(0, int(device_memory - reserve))


def planned_precision(setting: str, device_type: str) -> str:
    """``train.precision`` as it would resolve on ``device_type`` (module docstring's rule)."""
    if setting == "auto":
        return "bf16-mixed" if device_type == "cuda" else "fp32"
    return setting


# -- activations ---------------------------------------------------------------------------------


def _norm_saved(model: ModelConfig, elements: int, vectors: int, out_item: int) -> int:
    """A norm's saved bytes: its input in fp32 (a view, or a copy), and its statistics.

    LayerNorm keeps mean and rstd; RMSNorm keeps rstd and the normalised tensor (the
    weight's gradient multiplies by it).
    """
    if model.norm == "layernorm":
        return 4 * elements + 8 * vectors
    return 4 * elements + 4 * vectors + out_item * elements


def _linear_inputs(elements: int, item: int, compute: int, consumers: int) -> int:
    """What linears keep of a shared input: one tensor, or under autocast a cast copy each."""
    return elements * (compute * consumers if item != compute else item)


def _attention_saved(model: ModelConfig, b: int, t: int, a: int, device_type: str) -> int:
    n, heads, kv, d = b * t, model.num_heads, model.num_kv_heads, model.head_dim
    hq, hkv = heads * d, kv * d
    saved = a * n * (hq + hkv)  # rotated q and k (SDPA's inputs)
    saved += a * n * hq + 4 * b * heads * t  # the attention output, SDPA's fp32 log-sum-exp
    if model.qk_layernorm:
        if a == 4:  # the norms' fp32 views keep the fused qkv output, and v is a view of it
            saved += 4 * n * (hq + 2 * hkv)
        else:
            saved += 4 * n * (hq + hkv) + a * n * hkv  # the norms' fp32 inputs, v's copy
        saved += (8 if model.norm == "layernorm" else 4) * n * (heads + kv)
        if model.norm == "rmsnorm":
            saved += a * n * (hq + hkv)
    else:
        saved += a * n * hkv  # v's copy
    if device_type == "cuda" and a == 4 and kv != heads:
        saved += 4 * b * heads * t * t + 8 * n * hq  # no fused kernel: the math path's softmax
    if model.dropout > 0:
        if device_type != "cuda":  # CPU's attention with dropout: the math path
            saved += (a + 1) * b * heads * t * t
        saved += 2 * n * model.hidden_size  # the masks of the two residual dropouts
    return saved


def _mlp_saved(model: ModelConfig, n: int, a: int) -> int:
    i = model.intermediate_size
    if model.mlp == "swiglu":
        return 4 * a * n * i  # gate_up output, act(gate), act(gate) * up
    return (1 if model.activation == "relu" else 2) * a * n * i  # fc1 output, activation output


def block_saved(
    model: ModelConfig, b: int, t: int, a: int, r: int, device_type: str = "cuda"
) -> int:
    """Bytes one block saves for backward: ``a`` the compute dtype's size, ``r`` the stream's."""
    n, h = b * t, model.hidden_size
    saved = _norm_saved(model, n * h, n, r)
    saved += _linear_inputs(n * h, r, a, 2 if model.parallel_residual else 1)
    if not model.parallel_residual:  # the second norm and the MLP's own input
        saved += _norm_saved(model, n * h, n, r) + _linear_inputs(n * h, r, a, 1)
    return saved + _attention_saved(model, b, t, a, device_type) + _mlp_saved(model, n, a)


def activation_bytes(
    model: ModelConfig,
    *,
    micro_batch: int,
    seq_len: int,
    compute_bytes: int,
    params_low_precision: bool = False,
    checkpointing: bool = False,
    device_type: str = "cuda",
    released_copies: int = 0,
) -> ActivationBytes:
    """Activation memory of one micro batch (module docstring).

    ``compute_bytes``: 2 under bf16/fp16 autocast, 4 in fp32. ``params_low_precision``:
    the parameters themselves are in the compute dtype (FSDP2's gathered parameters),
    so the residual stream is too and no linear makes a copy of its input.
    ``released_copies``: autocast weight copies (counted with the copies, not here) that
    checkpointing lets go before backward, when one block's activations are recomputed.
    """
    b, t, a = micro_batch, seq_len, compute_bytes
    n, h, v = b * t, model.hidden_size, model.vocab_size
    r = a if params_low_precision else 4
    per_block = block_saved(model, b, t, a, r, device_type)
    stem_left = 8 * n + (n * h if model.dropout > 0 else 0)  # ids, the embedding's dropout mask
    loss_saved = _norm_saved(model, n * h, n, r) + r * n * h + 4 * v * h  # norm_f, grad_h, grad_w
    loss_saved += 4 * v if model.lm_head_bias else 0
    rows = min(n, loss_chunk_rows(v))
    forward = r * n * h + rows * v * (4 if a == 4 else 6) + rows * h * 4  # input, a chunk's logits
    if a != 4:
        forward += -(-v // LOSS_WEIGHT_GRAD_SLICES) * h * a  # a slice of the head's gradient
        forward += 0 if params_low_precision else a * v * h  # the head weight's cast
    backward = r * n * h + 4 * v * h + (a * v * h if params_low_precision else 0)
    loss_peak = max(forward, backward)  # the head's gradient scaled in the loss's backward
    # a block's backward, measured on CPU: the output projection's input gradient and weight
    # gradient (bf16, then its fp32 cast under autocast), or SwiGLU's gate_up gradient
    i, w_item = model.intermediate_size, (a + 4 if a != r else a)
    block_peak = max(a * n * i + w_item * h * i, 2 * a * n * i if model.mlp == "swiglu" else 0)
    if model.tie_word_embeddings:  # the head's gradient waits for the embedding's, at the end
        block_peak += (a if params_low_precision else 4) * v * h
    if checkpointing:
        saved = model.num_layers * r * n * h + stem_left + loss_saved
        recompute = per_block + block_peak - loss_saved - released_copies
        transient = max(loss_peak, recompute)
    else:
        saved = model.num_layers * per_block + stem_left + loss_saved
        transient = max(loss_peak, block_peak - loss_saved)
    return ActivationBytes(saved=saved, transient=max(0, transient))


# -- the plan ------------------------------------------------------------------------------------


def _shard(shape: tuple[int, ...], world: int) -> int:
    """Elements rank 0 holds of a tensor FSDP2 cuts along dim 0 (padded to equal pieces)."""
    return -(-shape[0] // world) * math.prod(shape[1:])


def _block_params(model: ModelConfig) -> tuple[int, int]:
    """(all of one block's parameters, one block's linear weights and biases)."""
    shapes = parameter_shapes(model)
    block = [(name, s) for name, s in shapes.items() if name.startswith("blocks.0.")]
    linear = sum(math.prod(s) for name, s in block if "norm" not in name)
    return sum(math.prod(s) for _name, s in block), linear


def _plan(
    model: ModelConfig,
    train: TrainConfig,
    seq_len: int,
    world_size: int,
    device_type: str,
    device_memory: int | None,
    precision: str,
) -> MemoryPlan:
    low = precision in LOW_PRECISION
    a = 2 if low else 4
    fsdp = train.fsdp and world_size > 1
    shapes = parameter_shapes(model).values()
    local = sum(_shard(s, world_size) for s in shapes) if fsdp else count_parameters(model)
    block_all, block_linear = _block_params(model)
    copies = extra = 0
    if fsdp:
        root = count_parameters(model) - model.num_layers * block_all
        copies = a * (root + 2 * block_all)  # the root's and two blocks' gathered params
        reduce_item = 2 if precision == "bf16-mixed" else 4  # fp16 reduces in fp32
        extra = block_all * (2 * a + reduce_item)  # all-gather out, unsharded grads, RS input
    elif low:
        copies = a * model.num_layers * block_linear  # autocast's cache, kept until backward
    acts = {
        ckpt: activation_bytes(
            model,
            micro_batch=train.micro_batch_size,
            seq_len=seq_len,
            compute_bytes=a,
            params_low_precision=fsdp and low,
            checkpointing=ckpt,
            device_type=device_type,
            released_copies=copies - copies // model.num_layers if low and not fsdp else 0,
        ).peak
        for ckpt in (False, True)
    }
    used = acts[train.activation_checkpointing]
    weights = 4 * local
    optimizer = 8 * local + 4 * len(shapes)
    total = 2 * weights + optimizer + copies + used + extra
    fits = None if device_memory is None else total <= usable(device_memory, device_type)
    return MemoryPlan(
        weights=weights,
        gradients=weights,
        optimizer=optimizer,
        low_precision_copies=copies,
        activations=used,
        activations_no_ckpt=acts[False],
        activations_ckpt=acts[True],
        data_parallel_extra=extra,
        total=total,
        world_size=world_size,
        fsdp=fsdp,
        device_memory=device_memory,
        fits=fits,
        suggestion=None,
        precision=precision,
        device_type=device_type,
        micro_batch_size=train.micro_batch_size,
        seq_len=seq_len,
        activation_checkpointing=train.activation_checkpointing,
    )


def plan_memory(
    model: ModelConfig,
    train: TrainConfig,
    *,
    seq_len: int,
    world_size: int = 1,
    device_type: str = "cuda",
    device_memory: int | None = None,
    precision: str | None = None,
) -> MemoryPlan:
    """The memory plan of training ``model`` with ``train`` on ``world_size`` devices.

    ``precision``: the resolved precision (``bf16-mixed`` | ``fp16-mixed`` | ``fp32``)
    when the caller knows it (the device is present); None resolves ``train.precision``
    by :func:`planned_precision`. With ``device_memory`` the plan says whether it fits,
    and when it does not, which setting makes it fit.
    """
    name = precision or planned_precision(train.precision, device_type)
    args = (seq_len, world_size, device_type, device_memory, name)
    plan = _plan(model, train, *args)
    if plan.fits is False:
        plan = replace(plan, suggestion=_suggest(model, train, *args))
    return plan


def _suggest(
    model: ModelConfig,
    train: TrainConfig,
    seq_len: int,
    world_size: int,
    device_type: str,
    device_memory: int | None,
    precision: str,
) -> str:
    """What fits, least disruptive first: on these devices checkpointing, the largest micro
    batch that fits, both (the first two of them), else FSDP over this job's ranks or more."""

    def total(world: int = world_size, **changes: Any) -> int | None:
        trial = train.model_copy(update=changes)
        plan = _plan(model, trial, seq_len, world, device_type, device_memory, precision)
        return plan.total if plan.fits else None

    def gib(n: int, each: str = "") -> str:
        return f"(≈ {n / GIB:.1f} GiB{each})"

    ckpt = train.activation_checkpointing
    smaller = [m for m in range(train.micro_batch_size - 1, 0, -1) if train.batch_size % m == 0]
    found = []
    if not ckpt and (n := total(activation_checkpointing=True)):
        found.append(f"train.activation_checkpointing true {gib(n)}")
    for with_ckpt in (False, True) if not ckpt else (False,):
        change = "train.activation_checkpointing true and " if with_ckpt else ""
        fitting = (
            (m, total(micro_batch_size=m, activation_checkpointing=with_ckpt or ckpt))
            for m in smaller
        )
        if first := next(((m, n) for m, n in fitting if n), None):
            found.append(f"{change}train.micro_batch_size {first[0]} {gib(first[1])}")
    if found:
        return "set " + ", or ".join(found[:2])
    worlds = [world_size] if world_size > 1 and not train.fsdp else []
    worlds += [w for w in FSDP_WORLD_SIZES if w > world_size]
    for world in worlds:
        for with_ckpt in dict.fromkeys((ckpt, True)):
            if n := total(world, fsdp=True, activation_checkpointing=with_ckpt):
                where = "" if world == world_size else f"train on {world} GPUs with "
                also = " and train.activation_checkpointing true" if with_ckpt and not ckpt else ""
                return f"{where or 'set '}train.fsdp true{also} {gib(n, ' per GPU')}"
    return (
        "nothing tried fits (activation checkpointing, micro_batch_size 1, FSDP over "
        f"{FSDP_WORLD_SIZES[-1]} GPUs): use a device with more memory"
    )
