"""Sizes computed from a config alone: parameters, training FLOPs per token, display units.

``allllm config list/show`` print these without importing torch; the model
counts its real parameters and a test checks the two agree.
"""

from __future__ import annotations

import math

from allllm.config import ModelConfig


def parameter_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable parameter's name and shape, computed from the config alone (no torch).

    The names are the model's own (``Transformer.named_parameters()``; a tied head
    owns no weight). The memory plan needs the shapes, not only the count: FSDP
    shards each tensor along its first dimension, and AdamW keeps a step per tensor.
    """
    h, v, i = model.hidden_size, model.vocab_size, model.intermediate_size
    hd, heads, kv = model.head_dim, model.num_heads, model.num_kv_heads

    def norm(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
        if model.norm == "layernorm":
            return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}
        return {f"{prefix}.weight": (dim,)}

    def linear(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {f"{prefix}.weight": (n_out, n_in)}
        if model.bias:
            shapes[f"{prefix}.bias"] = (n_out,)
        return shapes

    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (v, h)}
    for k in range(model.num_layers):
        p = f"blocks.{k}"
        shapes.update(norm(f"{p}.norm1", h))
        shapes.update(linear(f"{p}.attn.qkv", h, (heads + 2 * kv) * hd))
        shapes.update(linear(f"{p}.attn.proj", heads * hd, h))
        if model.qk_layernorm:
            shapes.update(norm(f"{p}.attn.q_norm", hd))
            shapes.update(norm(f"{p}.attn.k_norm", hd))
        if not model.parallel_residual:
            shapes.update(norm(f"{p}.norm2", h))
        if model.mlp == "gelu":
            shapes.update(linear(f"{p}.mlp.fc1", h, i))
            shapes.update(linear(f"{p}.mlp.fc2", i, h))
        else:
            shapes.update(linear(f"{p}.mlp.gate_up", h, 2 * i))
            shapes.update(linear(f"{p}.mlp.down", i, h))
    shapes.update(norm("norm_f", h))
    if not model.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    if model.lm_head_bias:
        shapes["lm_head.bias"] = (v,)
    return shapes


def count_parameters(model: ModelConfig) -> int:
    """The number of trainable parameters, computed from the config alone (no torch).

    The model code counts its real parameters and a test checks the two agree.
    """
    return sum(math.prod(shape) for shape in parameter_shapes(model).values())


# Logit elements per chunk of the chunked loss (fp32: 128 MiB): big enough for efficient matmuls.
LOSS_CHUNK_ELEMENTS = 2**25
# Under autocast the loss's head-weight gradient is summed in this many vocab slices.
LOSS_WEIGHT_GRAD_SLICES = 4


def loss_chunk_rows(vocab_size: int, chunk_size: int | None = None) -> int:
    """Positions per chunk of :func:`allllm.model.loss.linear_cross_entropy` (the memory plan
    sizes the loss's temporaries with it): ``chunk_size``, else about 32M logits a chunk."""
    if chunk_size is not None:
        return max(1, chunk_size)
    return max(128, (LOSS_CHUNK_ELEMENTS // vocab_size) // 128 * 128)


def flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) for MFU: ``6N + 12·L·H·Q·T``.

    PaLM convention, appendix B, no causal discount: ``N`` the matmul parameters
    (embedding lookups excluded, a tied head included), ``L`` layers, ``H·Q`` the
    attention width (heads × head dim = hidden size), ``T`` the sequence length. Using
    the published convention exactly keeps our MFU comparable with other reports.
    """
    n = count_parameters(model) - model.vocab_size * model.hidden_size  # embedding lookups are free
    if model.tie_word_embeddings:
        n += model.vocab_size * model.hidden_size  # ... but the tied head is a matmul
    attn = 12 * model.num_layers * model.hidden_size * seq_len
    return 6.0 * n + attn


def format_count(n: float) -> str:
    """1234567 -> '1.23M' (parameters, tokens)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
