"""The model: our Phi/Llama-family Transformer, its loss, KV cache, generation and sizes.

Importing ``allllm.model`` is cheap: the names below load their module (and
torch) on first use, so the CLI's light verbs never pay for torch. The model
knows nothing of shards, of training or of Hugging Face: ``allllm.hf`` maps
checkpoints in and out, ``allllm.train.parallelize`` applies activation
checkpointing, compilation and data parallelism from outside.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Transformer": "allllm.model.transformer",
    "empty_model": "allllm.model.transformer",
    "KVCache": "allllm.model.kv_cache",
    "generate": "allllm.model.generation",
    "sample_next": "allllm.model.generation",
    "linear_cross_entropy": "allllm.model.loss",
    "shifted_targets": "allllm.model.loss",
    "IGNORE_INDEX": "allllm.model.loss",
}

#: names that moved to ``allllm.hf`` (the Hugging Face boundary); kept here for one release
_MOVED_TO_HF = ("build_model", "from_hf", "load_init_weights", "to_hf")

__all__ = [
    "IGNORE_INDEX",
    "KVCache",
    "Transformer",
    "empty_model",
    "generate",
    "linear_cross_entropy",
    "sample_next",
    "shifted_targets",
]

if TYPE_CHECKING:
    from allllm.model.generation import generate, sample_next
    from allllm.model.kv_cache import KVCache
    from allllm.model.loss import IGNORE_INDEX, linear_cross_entropy, shifted_targets
    from allllm.model.transformer import Transformer, empty_model


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_HF:
        warnings.warn(
            f"allllm.model.{name} moved to allllm.hf.{name}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module("allllm.hf"), name)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'allllm.model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
