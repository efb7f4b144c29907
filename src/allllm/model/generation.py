"""Text generation: a preallocated key/value cache and a sampling loop.

The prompt is run once (prefill) and its keys/values kept; each new token then
costs one position of compute. Rotary positions continue from the cache's
position, so cached decoding gives the logits a full forward would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from allllm.config import ModelConfig

if TYPE_CHECKING:
    from allllm.model.transformer import Transformer


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


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row from ``logits`` ``[B, V]``: argmax at temperature 0, else sampled.

    ``top_k`` keeps the k most likely tokens, ``top_p`` the smallest set whose
    probability reaches p (nucleus); both filter before sampling.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach p (the top token always stays)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model: Transformer,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    *,
    eos_id: int | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
) -> Tensor:
    """Extend ``ids`` (``[T]`` or ``[B, T]``, equal-length prompts) by up to ``max_new_tokens``.

    Greedy at ``temperature`` 0. ``on_token`` receives each step's new tokens
    ``[B]`` as soon as they exist (for streaming). With ``eos_id`` a row that
    produced it keeps emitting ``eos_id``, and the loop stops once every row
    has. ``use_cache=False`` recomputes the whole sequence each step (slow; a
    reference for tests). ``vocab_limit`` never samples ids at or above it (the
    embedding may have more rows than the tokenizer has ids; those rows were never
    trained and decode to nothing). Returns prompt and new tokens, same rank as ``ids``.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    squeeze = ids.dim() == 1
    seq = ids[None, :] if squeeze else ids
    if seq.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    was_training = model.training
    model.eval()
    try:
        cache = None
        if use_cache:
            cache = KVCache(model.config, seq.shape[0], seq.shape[1] + max_new_tokens)
        finished = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        step_input = seq
        for _ in range(max_new_tokens):
            hidden = model.hidden_states(step_input if use_cache else seq, cache)
            logits = model.lm_head(hidden[:, -1], model.head_weight)  # the last position only
            if vocab_limit is not None and vocab_limit < logits.shape[-1]:
                logits[:, vocab_limit:] = float("-inf")
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                token = torch.where(finished, eos_id, token)
                finished |= token == eos_id
            seq = torch.cat((seq, token[:, None]), dim=1)
            if on_token is not None:
                on_token(token)
            if eos_id is not None and bool(finished.all()):
                break
            step_input = token[:, None]
    finally:
        model.train(was_training)
    return seq[0] if squeeze else seq
