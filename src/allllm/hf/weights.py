"""Load Hugging Face Phi/Llama checkpoints into our Transformer, and write them back.

``from_hf`` reads ``config.json`` and the weights (safetensors, sharded or
not; ``.bin`` only through ``torch.load(weights_only=True)``) without
instantiating the transformers model, checks every key and shape before
copying anything, and reports all disagreements in one error. ``to_hf``
writes a directory ``transformers.AutoModelForCausalLM.from_pretrained``
loads. Hub ids are fetched with ``huggingface_hub.snapshot_download``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from allllm.config import ModelConfig
from allllm.errors import CheckpointError, ConfigError
from allllm.hf.config_map import (
    IGNORED_KEY_SUFFIXES,
    Family,
    hf_config_from_model,
    hf_family,
    hf_family_for,
    hf_names,
    model_config_from_hf,
    split_sizes,
)
from allllm.model.transformer import Transformer, empty_model
from allllm.util.atomic import atomic_write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?$")
# What a hub download fetches: the config and HF's weight file names (model-0000x-of-0000y too).
SAFETENSORS_PATTERNS = ["config.json", "generation_config.json", "model*.safetensors*"]
BIN_PATTERNS = ["config.json", "generation_config.json", "pytorch_model*.bin*"]
DEFAULT_SHARD_BYTES = 5 * 1024**3


# -- locating a checkpoint -----------------------------------------------------------------------


def resolve_checkpoint(source: str | Path) -> Path:
    """A local directory holding ``config.json``: ``source`` itself, or a hub download of it.

    Hub ids may carry a revision: ``owner/name@revision``.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: not a directory", "point at a Hugging Face model folder"
            )
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: no config.json", "point at a folder made by save_pretrained or to_hf"
            )
        return path
    if isinstance(source, Path) or text.startswith((".", "/", "~")) or not HUB_ID.match(text):
        raise CheckpointError(f"{text}: no such directory", "check the path (or give a hub id)")
    return _download(text)


def _download(hub_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = hub_id.partition("@")
    offline_hint = (
        "not a local directory, and the Hugging Face hub cannot be reached for it — download it "
        f"where there is internet (`hf download {repo_id} --local-dir DIR`) and set "
        "model.init_from to DIR"
    )
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision or None, allow_patterns=SAFETENSORS_PATTERNS
            )
        )
        if not any(folder.glob("model*.safetensors")):
            folder = Path(
                snapshot_download(repo_id, revision=revision or None, allow_patterns=BIN_PATTERNS)
            )
    except GatedRepoError:
        raise CheckpointError(
            f"{hub_id}: gated model", "accept its license on huggingface.co and `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{hub_id}: no such model on the Hugging Face hub (or it is private)",
            "check the id, or `hf auth login` for a private model",
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{hub_id}: no such revision {revision!r}") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"{hub_id}: {offline_hint} ({type(exc).__name__})") from None
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{hub_id}: the repository has no config.json")
    return folder


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: not found", "a Hugging Face model folder needs config.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# -- reading weights -----------------------------------------------------------------------------


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


# -- writing -------------------------------------------------------------------------------------


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


def to_hf(
    model: Transformer,
    cfg: ModelConfig,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` + safetensors (+ ``generation_config.json`` when bos/eos are given).

    ``AutoModelForCausalLM.from_pretrained(directory)`` loads the result. A
    folder that already holds a model is refused unless ``overwrite``. Weights
    above ``max_shard_bytes`` are split into shards with an index, as HF does.
    """
    from safetensors.torch import save_file

    if model.config.architecture() != cfg.architecture():
        raise ConfigError("to_hf: cfg does not describe this model", "pass model.config")
    out_dir = Path(directory)
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
