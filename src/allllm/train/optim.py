"""The optimizer: AdamW without weight decay on norms, biases and embeddings.

Decaying a LayerNorm gain or a bias pulls it towards zero for no benefit, and
decaying the embedding hurts rare tokens; every modern recipe (nanoGPT,
litgpt, torchtitan) exempts them. The fused kernel is used on CUDA and, for unsharded
models, on CPU (torch >= 2.4), where it takes ~1.5 ms a step of the tiny preset against
~4.7 ms for the foreach one (benchmarks/bench_train.py).
"""

from __future__ import annotations

from types import SimpleNamespace

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
    """AdamW with the config's betas and eps (fused kernel where available); the schedule sets the LR."""
    fused = device.type == "cuda" or (device.type == "cpu" and not train.fsdp)
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(float(train.betas[0]), float(train.betas[1])),
        eps=train.adam_eps,
        fused=fused,
    )


def apply_hyperparams(optimizer: torch.optim.Optimizer, train: TrainConfig) -> list[str]:
    """Give every group the run's betas, eps and weight decay; the changes, one line each.

    Loading an optimizer state restores each param group whole, so without this a
    run would silently keep the hyper-parameters of the run that saved it. Moments and
    step counts stay (``--reset-optimizer`` drops them). Group 0 decays, group 1 (norms,
    biases, embeddings) keeps weight decay 0 (:func:`param_groups`).
    """
    wanted: dict[str, object] = {
        "betas": (float(train.betas[0]), float(train.betas[1])),
        "eps": float(train.adam_eps),
    }
    changes: list[str] = []
    for index, group in enumerate(optimizer.param_groups):
        target = {**wanted, "weight_decay": float(train.weight_decay) if index == 0 else 0.0}
        for key, new in target.items():
            old = group.get(key)
            old_cmp = tuple(old) if isinstance(old, (list, tuple)) else old
            if old_cmp != new:
                if index == 0:
                    changes.append(f"{_NAMES[key]} {_show(old)} → {_show(new)}")
                group[key] = new
    return list(dict.fromkeys(changes))


def hyperparam_changes(optimizer: torch.optim.Optimizer, train: TrainConfig) -> list[str]:
    """What :func:`apply_hyperparams` would change, leaving the optimizer as it is (dry runs)."""
    copy = SimpleNamespace(param_groups=[dict(g) for g in optimizer.param_groups])
    return apply_hyperparams(copy, train)  # type: ignore[arg-type]


_NAMES = {"betas": "train.betas", "eps": "train.adam_eps", "weight_decay": "train.weight_decay"}


def _show(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{float(v):g}" for v in value) + "]"
    return f"{float(value):g}" if isinstance(value, (int, float)) else str(value)
