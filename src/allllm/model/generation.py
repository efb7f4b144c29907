"""Text generation: sampling one token from logits, and the loop that extends a prompt.

The loop calls the model's ``decode_step`` with a
:class:`~allllm.model.kv_cache.KVCache` (prefill once, then one position a
step) or, as a slow reference, without one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from allllm.model.kv_cache import KVCache

if TYPE_CHECKING:
    from allllm.model.transformer import Transformer


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
            logits = model.decode_step(step_input if use_cache else seq, cache)
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
