"""The optimizer: AdamW without weight decay on norms, biases and embeddings.

Decaying a LayerNorm gain or a bias pulls it towards zero for no benefit, and
decaying the embedding hurts rare tokens; every modern recipe (nanoGPT,
litgpt, torchtitan) exempts them. The fused kernel is used on CUDA and, for unsharded
models, on CPU (torch >= 2.4), where it takes ~1.5 ms a step of the tiny preset against
~4.7 ms for the foreach one (benchmarks/bench_train.py).
"""

from __future__ import annotations

import torch
from torch import nn

from allllm.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: 2-D+ weight matrices decay; norms, biases and embeddings do not."""
    decay, no_decay = [], []
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    for _name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or id(param) in embedding_params:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the config's betas (fused kernel where available); the schedule sets the LR."""
    fused = device.type == "cuda" or (device.type == "cpu" and not train.fsdp)
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=tuple(train.betas),
        eps=1e-8,
        fused=fused,
    )
