"""The Hugging Face boundary: checkpoints in and out, the config mapping, the tokenizer export.

``from_hf`` / ``to_hf`` translate between a Hugging Face Phi/Llama folder (or
hub id) and our Transformer, ``build_model`` makes the model a config asks for
(fresh, or ``model.init_from``'s weights), and ``tokenizer_export`` writes the
tokenizer files ``AutoTokenizer`` loads. Importing ``allllm.hf`` is cheap:
each name loads its module (and torch) on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "from_hf": "allllm.hf.weights_in",
    "load_hf_weights": "allllm.hf.weights_in",
    "to_hf": "allllm.hf.weights_out",
    "hf_state_dict": "allllm.hf.weights_out",
    "resolve_checkpoint": "allllm.hf.locate",
    "build_model": "allllm.hf.init_from",
    "load_init_weights": "allllm.hf.init_from",
    "export_tokenizer": "allllm.hf.tokenizer_export",
}

__all__ = [
    "build_model",
    "export_tokenizer",
    "from_hf",
    "hf_state_dict",
    "load_hf_weights",
    "load_init_weights",
    "resolve_checkpoint",
    "to_hf",
]

if TYPE_CHECKING:
    from allllm.hf.init_from import build_model, load_init_weights
    from allllm.hf.locate import resolve_checkpoint
    from allllm.hf.tokenizer_export import export_tokenizer
    from allllm.hf.weights_in import from_hf, load_hf_weights
    from allllm.hf.weights_out import hf_state_dict, to_hf


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'allllm.hf' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
