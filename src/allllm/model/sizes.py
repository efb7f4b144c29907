"""Sizes computed from a config alone: parameters, training FLOPs per token, display units.

``allllm config list/show`` print these without importing torch; the model
counts its real parameters and a test checks the two agree.
"""

from __future__ import annotations

from allllm.config import ModelConfig


def count_parameters(model: ModelConfig) -> int:
    """The number of trainable parameters, computed from the config alone (no torch).

    The model code counts its real parameters and a test checks the two agree.
    """
    h, v, i = model.hidden_size, model.vocab_size, model.intermediate_size
    hd, kv = model.head_dim, model.num_kv_heads
    b = 1 if model.bias else 0
    norm_params = 2 * h if model.norm == "layernorm" else h
    attn = h * h + b * h  # q
    attn += 2 * (h * kv * hd + b * kv * hd)  # k, v
    attn += h * h + b * h  # out
    if model.qk_layernorm:
        per = 2 * hd if model.norm == "layernorm" else hd
        attn += 2 * per
    if model.mlp == "gelu":
        mlp = h * i + b * i + i * h + b * h
    else:
        mlp = 3 * h * i + b * (2 * i + h)
    norms = norm_params if model.parallel_residual else 2 * norm_params
    per_layer = attn + mlp + norms
    total = v * h  # embedding
    total += model.num_layers * per_layer
    total += norm_params  # final norm
    if not model.tie_word_embeddings:
        total += v * h
    if model.lm_head_bias:
        total += v
    return total


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
