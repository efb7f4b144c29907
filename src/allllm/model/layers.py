"""The building blocks of a decoder layer: norms, rotary embedding, attention, MLPs.

Each block computes exactly what the Hugging Face reference computes for the
same weights (PhiForCausalLM, LlamaForCausalLM) but is laid out for speed: the
q/k/v projections are one matmul (``qkv``), SwiGLU's gate and up projections
are one matmul (``gate_up``), the rotary tables are cached once, and
attention goes through ``scaled_dot_product_attention``. The bridge in
:mod:`allllm.hf` splits and joins those fused weights. Norms and rotary run in fp32
whatever the compute dtype, because that is where bf16 loses accuracy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from allllm.config import ModelConfig

if TYPE_CHECKING:
    from allllm.model.kv_cache import KVCache


class LayerNorm(nn.LayerNorm):
    """LayerNorm (weight and bias, as HF Phi) computed in fp32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (LlamaRMSNorm): normalise in fp32, then scale by ``weight``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The norm the config asks for, over the last ``dim`` features."""
    if cfg.norm == "layernorm":
        return LayerNorm(dim, eps=cfg.norm_eps)
    return RMSNorm(dim, eps=cfg.norm_eps)


class Rotary(nn.Module):
    """Cached cos/sin tables of rotary position embedding (HF ``rotate_half`` convention).

    Only the first ``rotary_dim`` features of each head rotate (phi-2: 32 of 80).
    The tables hold one half of the rotary dims (HF repeats them twice) and are
    fp32 buffers that are not saved; they grow on demand for long generations.
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.rotary_dim
        self.theta = cfg.rope_theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.reset_tables(cfg.max_position_embeddings)

    def reset_tables(self, length: int, device: torch.device | None = None) -> None:
        """(Re)compute the tables for positions ``0..length-1`` exactly as HF does (fp32)."""
        device = device or self.cos.device
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim)
        ).to(device)
        positions = torch.arange(length, device=device).float()
        freqs = positions[:, None] * inv_freq[None, :]
        self.cos = freqs.cos()
        self.sin = freqs.sin()

    def forward(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """The tables for positions ``start..start+length-1``: two ``[length, dim/2]`` fp32 tensors."""
        if start + length > self.cos.shape[0] or self.cos.dtype != torch.float32:
            # longer than the table, or ``model.to(bfloat16)`` cast the buffers: rebuild in fp32
            self.reset_tables(max(start + length, self.cos.shape[0]))
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2*cos.shape[-1]`` features of ``x`` ``[B, T, heads, head_dim]`` in fp32.

    Equal to HF's ``x*cos + rotate_half(x)*sin`` on the rotary part (same
    products, same order), without building the rotated copy. ``split`` rather
    than slicing: its backward is one concatenation, not a zero-filled copy per
    slice.
    """
    half = cos.shape[-1]
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    x1, x2, rest = x.split((half, half, x.shape[-1] - 2 * half), dim=-1)
    x1, x2 = x1.float(), x2.float()
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    if rest.shape[-1] == 0:
        return rotated
    return torch.cat((rotated, rest), dim=-1)


class Attention(nn.Module):
    """Causal multi-head / grouped-query self-attention with rotary positions.

    ``qkv`` stacks the q, k and v projections (rows: ``num_heads`` q heads, then
    ``num_kv_heads`` k heads, then v heads). Optional q/k norms (HF Phi's
    ``qk_layernorm``) act on each head before the rotation.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, qkv_rows, bias=cfg.bias)
        self.proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_layernorm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_layernorm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        batch, length, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(batch, length, heads + 2 * kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k, v = qkv.split((heads, kv_heads, kv_heads), dim=2)
            q = apply_rotary(self.q_norm(q), cos, sin)
            k = apply_rotary(self.k_norm(k), cos, sin)
        else:  # rotate q and k in one pass
            qk, v = qkv.split((heads + kv_heads, kv_heads), dim=2)
            q, k = apply_rotary(qk, cos, sin).split((heads, kv_heads), dim=2)
        if qkv.requires_grad and (self.q_norm is None or qkv.dtype != torch.float32):
            # SDPA saves v for backward: a view would keep the whole fused [B, T, q+k+v]
            # output alive until then; a copy of v lets it go once attention returns.
            # (fp32 q/k norms save their own views of it, so there it lives on anyway.)
            v = v.contiguous()
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        mask, causal = None, length > 1
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            if start > 0:  # new queries see every cached key, and each other causally
                causal = False
                if length > 1:
                    mask = cache.chunk_mask(length, device=x.device)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            enable_gqa=kv_heads != heads,
        )
        return self.proj(y.transpose(1, 2).reshape(batch, length, heads * self.head_dim))


def activation_fn(name: str) -> nn.Module:
    """The activation module for a config name (fused PyTorch kernels)."""
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


class GeluMLP(nn.Module):
    """fc1 → activation → fc2 (phi)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)

    @property
    def out_proj(self) -> nn.Linear:
        return self.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)) (llama); ``gate_up`` stacks the gate rows, then the up rows."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.bias)
        self.act = activation_fn(cfg.activation)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)

    @property
    def out_proj(self) -> nn.Linear:
        return self.down

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


def make_mlp(cfg: ModelConfig) -> GeluMLP | SwiGLU:
    return GeluMLP(cfg) if cfg.mlp == "gelu" else SwiGLU(cfg)


class Block(nn.Module):
    """One decoder layer: phi's parallel residual sharing one norm, or llama's pre-norm pair.

    parallel:   x + attn(norm1(x)) + mlp(norm1(x))
    sequential: h = x + attn(norm1(x));  h + mlp(norm2(h))
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.hidden_size)
        self.attn = Attention(cfg, layer_idx)
        self.norm2 = None if cfg.parallel_residual else make_norm(cfg, cfg.hidden_size)
        self.mlp = make_mlp(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        h = self.norm1(x)
        attn = self.drop(self.attn(h, cos, sin, cache))
        if self.norm2 is None:
            return attn + self.drop(self.mlp(h)) + x  # HF Phi's summation order
        x = x + attn
        return x + self.drop(self.mlp(self.norm2(x)))


def residual_init_std(cfg: ModelConfig, std: float = 0.02) -> float:
    """GPT-2 style: projections into the residual stream get std / sqrt(2 * layers)."""
    return std / math.sqrt(2 * cfg.num_layers)
