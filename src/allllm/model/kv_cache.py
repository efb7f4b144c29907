"""The key/value cache of generation: every layer's keys and values, preallocated once.

The prompt is run once (prefill) and its keys/values kept; each new token then
costs one position of compute. Rotary positions continue from the cache's
position, so cached decoding gives the logits a full forward would. The
attention layers fill it; :mod:`allllm.model.generation` drives it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from allllm.config import ModelConfig


class KVCache:
    """Keys and values of every layer for ``batch`` rows of up to ``max_len`` positions.

    Tensors are ``[batch, kv_heads, max_len, head_dim]`` per layer, allocated once on
    the device and in the dtype of the first keys stored; ``pos`` counts the
    positions already stored.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int) -> None:
        self.shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        # allocated on first use, in the dtype the layer computes in (autocast may make it bf16)
        self.keys: list[Tensor | None] = [None] * cfg.num_layers
        self.values: list[Tensor | None] = [None] * cfg.num_layers
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``/``v`` ``[B, kv_heads, T, D]`` after the cached positions; return all so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            keys = self.keys[layer] = k.new_zeros(self.shape)
            values = self.values[layer] = v.new_zeros(self.shape)
        keys[:, :, self.pos : end] = k
        values[:, :, self.pos : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def chunk_mask(self, length: int, device: torch.device) -> Tensor:
        """Boolean ``[length, pos + length]`` mask: new query i sees cached keys and new keys <= i."""
        keys = torch.arange(self.pos + length, device=device)
        queries = torch.arange(self.pos, self.pos + length, device=device)
        return keys[None, :] <= queries[:, None]

    def advance(self, length: int) -> None:
        """Called by the model after every layer stored ``length`` new positions."""
        self.pos += length
