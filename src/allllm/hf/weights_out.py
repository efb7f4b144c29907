"""Our Transformer out as a Hugging Face checkpoint folder.

``to_hf`` writes ``config.json`` (PhiForCausalLM or LlamaForCausalLM,
whichever computes our model exactly) and safetensors shards that
``transformers.AutoModelForCausalLM.from_pretrained`` loads: fused tensors are
split into HF's names, a tied head is stored once, and ``config.json`` is
written last so a half-written folder is never taken for a model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from allllm.config import ModelConfig
from allllm.errors import CheckpointError, ConfigError
from allllm.hf.config_map import hf_config_from_model, hf_family_for, hf_names, split_sizes
from allllm.model.transformer import Transformer
from allllm.util.atomic import atomic_write_text, set_umask_mode

DEFAULT_SHARD_BYTES = 5 * 1024**3


def hf_state_dict(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The model's weights under HF names (fused tensors split, tied head stored once)."""
    cfg = model.config
    family = hf_family_for(cfg)
    out: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        tensor = param.detach()
        if dtype is not None:
            tensor = tensor.to(dtype)
        keys = hf_names(name, family)
        sizes = split_sizes(name, cfg) or [tensor.shape[0]]
        for key, piece in zip(keys, tensor.split(sizes, dim=0)):
            out[key] = piece.contiguous().cpu()
    if family == "phi":  # PhiForCausalLM always has biases: zeros compute what we compute
        ref = out["model.embed_tokens.weight"]
        for key, rows in _phi_missing_biases(cfg):
            out[key] = torch.zeros(rows, dtype=ref.dtype)
    return out


def _phi_missing_biases(cfg: ModelConfig) -> list[tuple[str, int]]:
    """(HF key, length) of the biases PhiForCausalLM has and a bias-free config lacks."""
    missing = []
    if not cfg.bias:
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            missing += [
                (p + "self_attn.q_proj.bias", q),
                (p + "self_attn.k_proj.bias", kv),
                (p + "self_attn.v_proj.bias", kv),
                (p + "self_attn.dense.bias", cfg.hidden_size),
                (p + "mlp.fc1.bias", cfg.intermediate_size),
                (p + "mlp.fc2.bias", cfg.hidden_size),
            ]
    if not cfg.lm_head_bias:
        missing.append(("lm_head.bias", cfg.vocab_size))
    return missing


def _shards(tensors: dict[str, Tensor], max_bytes: int) -> Iterator[dict[str, Tensor]]:
    shard: dict[str, Tensor] = {}
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[key] = tensor
        size += nbytes
    if shard:
        yield shard


def _legacy_call(
    model: Transformer, directory: str | Path | ModelConfig, rest: tuple[Any, ...]
) -> tuple[str | Path, torch.dtype | None]:
    """``(directory, dtype)`` of ``to_hf(model, directory[, dtype])`` or of the old
    ``to_hf(model, cfg, directory[, dtype])``, which keeps working for one release."""
    if not isinstance(directory, ModelConfig):
        if len(rest) > 1:
            raise TypeError("to_hf(model, directory, dtype=None, *, ...): too many arguments")
        return directory, rest[0] if rest else None
    if not rest or len(rest) > 2:
        raise TypeError("to_hf(model, cfg, directory[, dtype]): the old call needs a directory")
    if model.config.architecture() != directory.architecture():
        raise ConfigError("to_hf: cfg does not describe this model", "call to_hf(model, directory)")
    warnings.warn(
        "to_hf(model, cfg, directory): the model carries its config; call to_hf(model, directory)",
        DeprecationWarning,
        stacklevel=3,
    )
    return rest[0], rest[1] if len(rest) > 1 else None


def to_hf(
    model: Transformer,
    directory: str | Path | ModelConfig,
    *args: Any,
    bos_id: int | None = None,
    eos_id: int | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` + safetensors (+ ``generation_config.json`` when bos/eos are given).

    ``to_hf(model, directory, dtype=None)``: the config is the model's own. The
    weights are written in ``dtype`` (default: as they are).
    ``AutoModelForCausalLM.from_pretrained(directory)`` loads the result. A
    folder that already holds a model is refused unless ``overwrite``. Weights
    above ``max_shard_bytes`` are split into shards with an index, as HF does.
    """
    from safetensors.torch import save_file

    target, dtype = _legacy_call(model, directory, args)
    cfg = model.config
    out_dir = Path(target)
    existing = [
        p.name
        for p in (
            out_dir / "config.json",
            out_dir / "model.safetensors",
            out_dir / "model.safetensors.index.json",
        )
        if p.exists()
    ]
    if existing and not overwrite:
        raise CheckpointError(
            f"{out_dir}: already holds a model ({', '.join(existing)})",
            "choose an empty folder or pass overwrite=True",
        )
    tensors = hf_state_dict(model, dtype)
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    hf = hf_config_from_model(cfg, dtype_name=dtype_name, bos_id=bos_id, eos_id=eos_id)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [
            *out_dir.glob("model-*-of-*.safetensors"),
            out_dir / "model.safetensors.index.json",
        ]:
            stale.unlink(missing_ok=True)  # only reached with overwrite=True
        shards = list(_shards(tensors, max_shard_bytes))
        names = (
            ["model.safetensors"]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        for name, shard in zip(names, shards):
            tmp = out_dir / f".{name}.tmp"
            save_file(shard, str(tmp), metadata={"format": "pt"})
            set_umask_mode(tmp)  # safetensors writes it 0600
            tmp.replace(out_dir / name)
        if len(shards) > 1:
            index = {
                "metadata": {
                    "total_size": sum(t.numel() * t.element_size() for t in tensors.values())
                },
                "weight_map": {k: n for n, s in zip(names, shards) for k in s},
            }
            atomic_write_text(
                out_dir / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n"
            )
        if bos_id is not None or eos_id is not None:
            generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
            atomic_write_text(
                out_dir / "generation_config.json", json.dumps(generation, indent=2) + "\n"
            )
        atomic_write_text(out_dir / "config.json", json.dumps(hf, indent=2) + "\n")  # last
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    return out_dir
