"""allllm: step-wise (incremental) pre-training of decoder-only LLMs.

The stable Python API, one name per verb of the step-wise flow::

    import allllm
    from allllm.config import load_config

    cfg = load_config("tiny")
    allllm.tokenize(cfg)                 # raw text -> shards (allllm tokenize)
    allllm.build_status(cfg)             # what is seen, new, invalid (allllm status --json)
    allllm.train(cfg)                    # finish a pending run, train what is new (allllm train)
    model, model_cfg = allllm.from_hf("microsoft/phi-2")   # a Hugging Face checkpoint in
    allllm.to_hf(model, "out/")          # ... and out

The package root stays import-light on purpose: ``allllm --help`` must answer
in well under a second, so these names load their modules (and torch) only
when first used. ``allllm.train`` is the training package itself; calling it
runs :func:`allllm.train.session.train`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (module, attribute); None: the module itself
_PUBLIC = {
    "tokenize": ("allllm.data.tokenize.run", "tokenize"),
    "build_status": ("allllm.use.status", "build_status"),
    "train": ("allllm.train", None),
    "from_hf": ("allllm.hf.weights_in", "from_hf"),
    "to_hf": ("allllm.hf.weights_out", "to_hf"),
}

__all__ = ["__version__", "build_status", "from_hf", "to_hf", "tokenize", "train"]

if TYPE_CHECKING:
    from allllm import train
    from allllm.data.tokenize.run import tokenize
    from allllm.hf.weights_in import from_hf
    from allllm.hf.weights_out import to_hf
    from allllm.use.status import build_status


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'allllm' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    loaded = import_module(module)
    return loaded if attribute is None else getattr(loaded, attribute)
