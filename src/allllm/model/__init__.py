"""The model: our Phi/Llama-family Transformer, its loss, generation and the HF bridge.

Importing ``allllm.model`` is cheap: the names below load their module (and
torch) on first use, so the CLI's light verbs never pay for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Transformer": "allllm.model.transformer",
    "empty_model": "allllm.model.transformer",
    "build_model": "allllm.hf.init_from",
    "load_init_weights": "allllm.hf.init_from",
    "from_hf": "allllm.hf.weights",
    "to_hf": "allllm.hf.weights",
    "KVCache": "allllm.model.generation",
    "generate": "allllm.model.generation",
    "sample_next": "allllm.model.generation",
    "linear_cross_entropy": "allllm.model.loss",
    "shifted_targets": "allllm.model.loss",
    "IGNORE_INDEX": "allllm.model.loss",
}

__all__ = [
    "IGNORE_INDEX",
    "KVCache",
    "Transformer",
    "build_model",
    "empty_model",
    "from_hf",
    "generate",
    "linear_cross_entropy",
    "load_init_weights",
    "sample_next",
    "shifted_targets",
    "to_hf",
]

if TYPE_CHECKING:
    from allllm.hf.init_from import build_model, load_init_weights
    from allllm.hf.weights import from_hf, to_hf
    from allllm.model.generation import KVCache, generate, sample_next
    from allllm.model.loss import IGNORE_INDEX, linear_cross_entropy, shifted_targets
    from allllm.model.transformer import Transformer, empty_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'allllm.model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
