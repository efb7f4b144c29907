"""Hugging Face Phi/Llama weights into our Transformer.

``from_hf`` reads ``config.json`` and the weights (safetensors, sharded or
not; ``.bin`` only through ``torch.load(weights_only=True)``) without
instantiating the transformers model, checks every key and shape before
copying anything, and reports all disagreements in one error.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from allllm.config import ModelConfig
from allllm.errors import CheckpointError
from allllm.hf.config_map import (
    IGNORED_KEY_SUFFIXES,
    Family,
    hf_family,
    hf_names,
    model_config_from_hf,
    split_sizes,
)
from allllm.hf.locate import read_hf_config, resolve_checkpoint
from allllm.model.transformer import Transformer, empty_model


class WeightFiles:
    """The tensors of a checkpoint folder by name: shapes first (headers only), data on demand."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, Any] = {}  # key -> open safetensors file or loaded state dict
        for file in self._files():
            if file.suffix == ".safetensors":
                self._open_safetensors(file, stack)
            else:
                self._load_bin(file)

    def _files(self) -> list[Path]:
        d = self.directory
        for index_name, single in (
            ("model.safetensors.index.json", "model.safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin"),
        ):
            index = d / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"{index}: unreadable index ({exc})") from None
                files = [d / name for name in sorted(set(weight_map.values()))]
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise CheckpointError(
                        f"{index}: lists {len(missing)} missing file(s): {', '.join(missing[:3])}",
                        "the download is incomplete — fetch the model again",
                    )
                return files
            if (d / single).is_file():
                return [d / single]
        raise CheckpointError(
            f"{d}: no weights found",
            "expected model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        )

    def _open_safetensors(self, file: Path, stack: ExitStack) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                self.shapes[key] = tuple(handle.get_slice(key).get_shape())
                self._where[key] = handle
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None

    def _load_bin(self, file: Path) -> None:
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors have many types; all mean "cannot use this"
            raise CheckpointError(
                f"{file}: cannot load safely with torch.load(weights_only=True) "
                f"({type(exc).__name__}) — convert it to safetensors"
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{file}: expected a state dict of tensors")
        for key, value in state.items():
            if isinstance(value, Tensor):
                self.shapes[key] = tuple(value.shape)
                self._where[key] = state

    def get(self, key: str) -> Tensor:
        where = self._where[key]
        return where[key] if isinstance(where, dict) else where.get_tensor(key)


def _fmt_names(names: list[str], limit: int = 3) -> str:
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _plan(
    model: Transformer, cfg: ModelConfig, family: Family, files: WeightFiles, source: str
) -> dict[str, list[str]]:
    """Our parameter → its HF keys; raises one CheckpointError listing every mismatch."""
    plan: dict[str, list[str]] = {}
    missing: list[str] = []
    wrong: list[str] = []
    used: set[str] = set()
    for name, param in model.named_parameters():
        keys = hf_names(name, family)
        sizes = split_sizes(name, cfg) or [param.shape[0]]
        for key, rows in zip(keys, sizes):
            used.add(key)
            expected = (rows, *param.shape[1:])
            if key not in files.shapes:
                missing.append(key)
            elif files.shapes[key] != expected:
                wrong.append(f"{key} {list(files.shapes[key])} (expected {list(expected)})")
        plan[name] = keys
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()  # HF re-ties it too
    unexpected = [
        k
        for k in files.shapes
        if k not in used and k not in ignorable and not k.endswith(IGNORED_KEY_SUFFIXES)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_fmt_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_fmt_names(sorted(unexpected))})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({_fmt_names(wrong)})")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match config.json: {'; '.join(problems)}",
            "config.json and the weight files must come from the same model",
        )
    return plan


@torch.no_grad()
def load_hf_weights(model: Transformer, directory: Path, source: str | None = None) -> None:
    """Copy the weights of an HF checkpoint folder into ``model`` (shapes checked first)."""
    source = source or str(directory)
    cfg = model.config
    family = hf_family(read_hf_config(directory), source)
    with ExitStack() as stack:
        files = WeightFiles(directory, stack)
        plan = _plan(model, cfg, family, files, source)
        for name, param in model.named_parameters():
            row = 0
            for key in plan[name]:
                tensor = files.get(key)
                param[row : row + tensor.shape[0]].copy_(tensor)
                row += tensor.shape[0]


def from_hf(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Transformer, ModelConfig]:
    """Our model and config from an HF Phi/Llama checkpoint: a local folder or a hub id.

    Weights are converted to ``dtype`` (fp32 by default: the right master copy
    for training); ``model.init_from`` of the returned config names ``source``.
    """
    directory = resolve_checkpoint(source)
    hf = read_hf_config(directory)
    cfg = model_config_from_hf(hf, str(directory / "config.json"))
    cfg = cfg.model_copy(update={"init_from": str(source)})
    model = empty_model(cfg, device=device, dtype=dtype)
    load_hf_weights(model, directory, str(source))
    return model, cfg
