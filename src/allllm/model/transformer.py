"""The decoder-only language model built from a ``model`` config section.

``Transformer(cfg)`` covers the phi family (parallel residual, LayerNorm,
GELU MLP, partial rotary, biased head) and the llama family (pre-norm,
RMSNorm, SwiGLU, grouped-query attention, tied embeddings) and their mixes;
the config decides. Parameter names are ours (fused ``qkv``); ``allllm.hf``
translates to and from Hugging Face checkpoints.

Three ways in, one per job:

- ``model(ids, lengths)`` → ``(loss_sum, count)``: the one training entry
  point, the call DDP, FSDP2 and ``torch.compile`` wrap (their hooks only run
  through ``__call__``). ``lengths`` / ``mask`` mark each row's valid positions.
- ``model.logits(ids)`` → logits ``[B, T, V]`` (evaluation, tests); with a
  :class:`~allllm.model.kv_cache.KVCache`, the logits of the new positions.
- ``model.decode_step(ids, cache)`` → logits ``[B, V]`` of the last position,
  the step of cached generation.

The model knows nothing of how it is trained: activation checkpointing,
compilation and data parallelism are applied from outside, without renaming a
parameter (``allllm.train.parallelize``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from allllm.config import ModelConfig
from allllm.model.layers import Block, LayerNorm, RMSNorm, Rotary, make_norm, residual_init_std
from allllm.model.loss import linear_cross_entropy, shifted_targets
from allllm.model.sizes import flops_per_token

if TYPE_CHECKING:
    from allllm.model.kv_cache import KVCache


class Transformer(nn.Module):
    """Token embedding → blocks → final norm → lm_head (optionally tied to the embedding).

    ``loss_chunk_size`` (positions per head chunk of the loss; None picks ~32M
    logits a chunk) may be set by a caller.
    """

    def __init__(self, cfg: ModelConfig, *, init: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.rope = Rotary(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm_f = make_norm(cfg, cfg.hidden_size)
        self.lm_head = LMHead(cfg)
        self.loss_chunk_size: int | None = None
        if init:
            self.init_weights()

    # -- weights ----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh weights for training from scratch (GPT-2 / nanoGPT scheme).

        Matrices and embeddings ~ N(0, std); the projections that write into the
        residual stream (attention output, MLP output) ~ N(0, std / sqrt(2 L)) so
        the stream's variance does not grow with depth; biases 0; norms 1.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                module.reset_parameters()
        self.lm_head.reset_parameters(std)
        resid_std = residual_init_std(self.config, std)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=resid_std)
            nn.init.normal_(block.mlp.out_proj.weight, mean=0.0, std=resid_std)
        self.rope.reset_tables(self.config.max_position_embeddings)

    def num_parameters(self) -> int:
        """Trainable parameters (a tied head counts once); equals ``config.count_parameters``."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at ``seq_len`` (6N + attention), for MFU."""
        return flops_per_token(self.config, seq_len)

    @property
    def head_weight(self) -> Tensor:
        return self.embed.weight if self.lm_head.weight is None else self.lm_head.weight

    # -- forward ----------------------------------------------------------------------------------
    def hidden_states(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final-normed hidden states ``[B, T, H]`` of ``ids`` ``[B, T]``."""
        start = cache.pos if cache is not None else 0
        cos, sin = self.rope(start, ids.shape[1])
        x = self.drop(self.embed(ids))
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.norm_f(x)

    def forward(
        self, ids: Tensor, lengths: Tensor | None = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The causal-LM loss of ``ids`` ``[B, T]`` as ``(loss_sum, count)`` (the training step).

        ``lengths`` ``[B]`` / ``mask`` ``[B, T]`` mark each row's valid (leading)
        positions; padding sits after the valid tokens, which causal attention
        never lets them see, and is never a target.
        """
        x = self.hidden_states(ids)
        targets = shifted_targets(ids, lengths, mask)
        return linear_cross_entropy(
            x.reshape(-1, x.shape[-1]),
            self.head_weight,
            self.lm_head.bias,
            targets.reshape(-1),
            chunk_size=self.loss_chunk_size,
        )

    def loss(
        self, ids: Tensor, lengths: Tensor | None = None, *, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(loss_sum, count)``: ``model(ids, lengths)`` spelled for readability."""
        return self(ids, lengths, mask=mask)

    def logits(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``[B, T, V]`` of every position of ``ids`` (with ``cache``: the new ones)."""
        return self.lm_head(self.hidden_states(ids, cache), self.head_weight)

    def decode_step(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``[B, V]`` of the last position: one step of generation.

        With ``cache`` only ``ids``' new positions are computed (and stored);
        without, ``ids`` is the whole sequence so far.
        """
        hidden = self.hidden_states(ids, cache)
        return self.lm_head(hidden[:, -1], self.head_weight)


class LMHead(nn.Module):
    """The output projection. With tied embeddings it owns no weight (only the optional bias),
    so the state dict holds the shared matrix once, under ``embed.weight``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.weight = (
            None
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        )
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.lm_head_bias else None

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        if self.weight is not None:
            nn.init.normal_(self.weight, mean=0.0, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)


def empty_model(
    cfg: ModelConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Transformer:
    """A model whose weights are uninitialised memory, to be loaded from a checkpoint.

    Built on the meta device, then allocated: no time goes into an init that
    the checkpoint overwrites (seconds for a billion parameters).
    """
    with torch.device("meta"):
        model = Transformer(cfg, init=False).to(dtype)
    model.to_empty(device=device)
    model.rope.reset_tables(cfg.max_position_embeddings, device=torch.device(device))
    return model
