"""Tiny model configs shared by the model tests (each builds in milliseconds)."""

from __future__ import annotations

from typing import Any

import torch

from allllm.config import ModelConfig


def tiny_config(**overrides: Any) -> ModelConfig:
    """A 2-layer model small enough for exact comparisons in well under a second."""
    fields: dict[str, Any] = {
        "arch": "phi",
        "vocab_size": 101,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "max_position_embeddings": 64,
    }
    fields.update(overrides)
    return ModelConfig.model_validate(fields)


# One config of every structural kind the model supports.
CONFIGS: dict[str, dict[str, Any]] = {
    "phi-rotary-0.4": {
        "arch": "phi",
        "partial_rotary_factor": 0.4,
        "hidden_size": 80,
        "num_heads": 2,
    },
    "phi-rotary-0.5": {"arch": "phi", "partial_rotary_factor": 0.5},
    "phi-qk-layernorm": {"arch": "phi", "qk_layernorm": True},
    "phi-tied": {"arch": "phi", "tie_word_embeddings": True},
    "llama-gqa": {"arch": "llama", "num_kv_heads": 2, "intermediate_size": 96},
    "llama-tied": {"arch": "llama", "tie_word_embeddings": True, "num_kv_heads": 1},
    "llama-bias": {"arch": "llama", "bias": True, "rope_theta": 500.0},
    "mixed-rms-gelu-qknorm": {
        "arch": "phi",
        "norm": "rmsnorm",
        "qk_layernorm": True,
        "bias": False,
        "lm_head_bias": False,
    },
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every parameter (norms and biases too) random values, so no mapping error hides."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        param.copy_(torch.randn(param.shape, generator=gen) * std + centre)
