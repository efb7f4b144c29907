"""Make the model a config asks for: fresh weights, or ``model.init_from``'s.

``init_from`` names a Hugging Face checkpoint (local folder or hub id) whose
architecture must be the config's: a run that silently trained a different
model than its config describes would be worse than an error.
"""

from __future__ import annotations

import torch

from allllm.config import ModelConfig
from allllm.errors import ConfigError
from allllm.model.transformer import Transformer, empty_model

_FROM_CONFIG = object()


def load_init_weights(model: Transformer, source: str) -> None:
    """Overwrite ``model``'s weights with the HF checkpoint ``source`` if architectures agree."""
    from allllm.hf.config_map import architecture_differences, model_config_from_hf
    from allllm.hf.locate import read_hf_config, resolve_checkpoint
    from allllm.hf.weights_in import load_hf_weights

    directory = resolve_checkpoint(source)
    theirs = model_config_from_hf(read_hf_config(directory), str(directory / "config.json"))
    differences = architecture_differences(model.config, theirs)
    if differences:
        raise ConfigError(
            f"model.init_from {source}: the checkpoint's architecture differs from the config: "
            + "; ".join(differences),
            "set those model fields to the checkpoint's values (allllm config can show them)",
        )
    load_hf_weights(model, directory, source)


def build_model(
    cfg: ModelConfig,
    *,
    init_from: str | object | None = _FROM_CONFIG,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Transformer:
    """The model of ``cfg``: freshly initialised, or loaded from ``init_from``.

    ``init_from`` defaults to ``cfg.init_from``; pass None to force a fresh init.
    """
    source = cfg.init_from if init_from is _FROM_CONFIG else init_from
    if source is not None and not isinstance(source, str):
        raise TypeError("init_from must be a string or None")
    model = empty_model(cfg, device=device, dtype=dtype)  # no time spent on PyTorch's default init
    if source is None:
        model.init_weights()
    else:
        load_init_weights(model, source)
    return model
