"""The sections of a run config as strict pydantic models, checked before any compute.

A config is checked completely before any compute is spent: unknown keys,
wrong types, out-of-range values and cross-field rules (heads dividing the
hidden size, seq_len within the position table, ...) are errors. ``model.arch``
fills the family defaults (phi or llama); keys given explicitly override them.

The contract for every key is in docs/design.md (config). Reading files and naming the
file and JSON path of an error is ``allllm.config.files``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A config name becomes a directory name (checkpoints/<name>), so only safe characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Family defaults filled in by ``model.arch``; explicit keys override them.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "phi": {
        "norm": "layernorm",
        "mlp": "gelu",
        "activation": "gelu_tanh",
        "parallel_residual": True,
        "bias": True,
        "lm_head_bias": True,
        "partial_rotary_factor": 0.5,
        "tie_word_embeddings": False,
        "norm_eps": 1e-5,
    },
    "llama": {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "activation": "silu",
        "parallel_residual": False,
        "bias": False,
        "lm_head_bias": False,
        "partial_rotary_factor": 1.0,
        "tie_word_embeddings": False,
        "norm_eps": 1e-5,
    },
}


class _Strict(BaseModel):
    """Base for every section: unknown keys are errors, values keep their JSON types.

    ``strict=True`` so ``"yes"`` is no boolean, ``64.0`` or ``"64"`` no integer and ``3``
    no string — a quoting slip must not silently become a setting. An int still passes
    for a float (pydantic's strict float takes ints); tuples opt back into lax mode
    per field so JSON lists fill them (their items stay strict).
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, protected_namespaces=()
    )


class ModelConfig(_Strict):
    """The architecture. Sizes are bounded so a typo cannot ask for a petabyte model."""

    arch: Literal["phi", "llama"] = "phi"
    vocab_size: int = Field(ge=2, le=2**31 - 1)
    hidden_size: int = Field(ge=1, le=65536)
    intermediate_size: int = Field(default=0, ge=0, le=1_048_576)
    num_layers: int = Field(ge=1, le=1024)
    num_heads: int = Field(ge=1, le=4096)
    num_kv_heads: int = Field(default=0, ge=0, le=4096)
    max_position_embeddings: int = Field(default=2048, ge=1, le=4_194_304)
    rope_theta: float = Field(default=10000.0, gt=0)
    partial_rotary_factor: float = Field(gt=0.0, le=1.0)
    norm_eps: float = Field(gt=0.0, lt=1.0)
    norm: Literal["layernorm", "rmsnorm"]
    mlp: Literal["gelu", "swiglu"]
    activation: Literal["gelu_tanh", "gelu", "silu", "relu"]
    parallel_residual: bool
    bias: bool
    lm_head_bias: bool
    qk_layernorm: bool = False
    tie_word_embeddings: bool
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    init_from: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_family_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        arch = data.get("arch", "phi")
        defaults = ARCH_DEFAULTS.get(arch) if isinstance(arch, str) else None
        if defaults is None:
            return data  # the Literal check reports the bad arch
        filled = {**defaults, **data}
        filled.setdefault("arch", arch)
        return filled

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.intermediate_size == 0:
            object.__setattr__(self, "intermediate_size", default_intermediate_size(self))
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                " — choose num_heads that divides hidden_size"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}"
                " — num_kv_heads must divide num_heads (grouped-query attention)"
            )
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ValueError(
                f"rotary dims int(head_dim {self.head_dim} * partial_rotary_factor "
                f"{self.partial_rotary_factor}) = {self.rotary_dim} must be even and at least 2"
                " — adjust partial_rotary_factor"
            )
        if self.mlp == "swiglu" and self.activation not in ("silu", "gelu", "gelu_tanh"):
            raise ValueError("swiglu needs a smooth gate activation: silu, gelu or gelu_tanh")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the weight shapes and the function the model computes."""
        data = self.model_dump()
        for key in ("dropout", "init_from"):
            data.pop(key)
        return data


def default_intermediate_size(model: ModelConfig) -> int:
    """4x hidden for a plain MLP; for SwiGLU ~8/3x hidden rounded up to a multiple of 256."""
    if model.mlp == "gelu":
        return 4 * model.hidden_size
    return 256 * math.ceil(8 * model.hidden_size / 3 / 256)


class TokenizerConfig(_Strict):
    """Which tokenizer makes the ids. The backend never adds special tokens itself."""

    backend: Literal["hf", "sentencepiece", "tiktoken", "byte"] = "byte"
    path: str | None = None
    add_bos: bool = False
    add_eos: bool = True
    trust_remote_code: bool = False
    pattern: str | None = None
    special_tokens: dict[str, int] | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None

    @model_validator(mode="after")
    def _check_backend_fields(self) -> TokenizerConfig:
        b = self.backend
        if b == "byte":
            if self.path:
                raise ValueError("the byte tokenizer takes no path — remove tokenizer.path")
        elif not self.path:
            examples = {
                "hf": '"microsoft/phi-2" or a local tokenizer.json / folder',
                "sentencepiece": "a local .model file",
                "tiktoken": '"cl100k_base" or a local .tiktoken file',
            }
            raise ValueError(f"backend {b!r} needs tokenizer.path ({examples[b]})")
        if b != "tiktoken" and (self.pattern is not None or self.special_tokens is not None):
            raise ValueError("pattern and special_tokens are only for the tiktoken backend")
        if b == "tiktoken" and self.path and is_tiktoken_file(self.path) and not self.pattern:
            raise ValueError(
                "a .tiktoken ranks file needs tokenizer.pattern (the pre-tokenizer regex)"
            )
        if self.special_tokens:
            for tok, idx in self.special_tokens.items():
                if idx < 0:
                    raise ValueError(f"special token {tok!r} has a negative id {idx}")
        return self


def is_tiktoken_file(path: str) -> bool:
    """A tiktoken path names a ranks file (rather than an encoding name) if it looks like one."""
    return path.endswith(".tiktoken") or "/" in path or "\\" in path or Path(path).is_file()


class DataConfig(_Strict):
    """Where raw text comes from, how documents are cut, and how shards are written."""

    raw_path: str | list[str] = "data/raw"
    dir: str = "data"
    seq_len: int = Field(default=2048, ge=1, le=4_194_304)
    formats: list[Literal["jsonl", "bin"]] = Field(default_factory=lambda: ["jsonl", "bin"])
    document_boundary: Literal["file", "blank_line", "line"] = "file"
    text_field: str = "text"
    # the longest record (a JSON line, a Parquet or Arrow value) read; one over it is an error
    max_document_bytes: int = Field(default=1 << 30, ge=1)
    on_decode_error: Literal["error", "replace"] = "error"
    pack_below_bytes: int = Field(default=1_000_000, ge=0)
    # the most input bytes one shard job (one shard) holds; cut at document / unit boundaries
    shard_bytes: int = Field(default=256 << 20, ge=1)
    val_fraction: float = Field(default=0.01, ge=0.0, le=0.5)
    eval_shards: str | None = None
    # exact duplicate documents inside one run train once (row_filter.py; docs/design.md)
    dedup: bool = True
    # glob of shard metas (anywhere in the workspace) mixed into every run as anchor replay
    anchor: str | None = None

    @field_validator("formats")
    @classmethod
    def _formats_nonempty_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('formats must name at least one of "jsonl", "bin"')
        if len(set(v)) != len(v):
            raise ValueError("formats lists a format twice")
        return v

    @field_validator("raw_path")
    @classmethod
    def _raw_path_nonempty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("raw_path is an empty list — name at least one file, folder or glob")
        if isinstance(v, str) and not v.strip():
            raise ValueError("raw_path is empty")
        return v

    @property
    def raw_paths(self) -> list[str]:
        return [self.raw_path] if isinstance(self.raw_path, str) else list(self.raw_path)


_DURATION = re.compile(
    r"^\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*(?:(?P<m>\d+(?:\.\d+)?)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s)?\s*$"
)


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``3600``, ``"90m"``, ``"1h30m"``, ``"45s"`` or ``"01:30:00"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '1h30m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif re.fullmatch(r"\d+:\d{1,2}(:\d{1,2})?", text):
            parts = [int(p) for p in text.split(":")]
            while len(parts) < 3:
                parts.insert(0, 0)
            seconds = float(parts[0] * 3600 + parts[1] * 60 + parts[2])
        else:
            m = _DURATION.match(text)
            if not m or not any(m.groupdict().values()):
                raise ValueError(
                    f"cannot read duration {value!r} — use seconds (3600), '90m', '1h30m' or 'HH:MM:SS'"
                )
            seconds = sum(float(m[k] or 0) * f for k, f in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class TrainConfig(_Strict):
    """Optimisation, schedule, precision and checkpointing of ``allllm train``."""

    micro_batch_size: int = Field(default=4, ge=1, le=65536)
    batch_size: int = Field(default=32, ge=1, le=16_777_216)
    epochs: int = Field(default=1, ge=1, le=100_000)
    lr: float = Field(default=3e-4, gt=0.0, le=10.0)
    min_lr: float = Field(default=3e-5, ge=0.0)
    warmup_steps: int = Field(default=100, ge=0)
    # strict=False on the tuple only: a JSON list fills it; each beta stays a strict number.
    betas: tuple[float, float] = Field(default=(0.9, 0.95), strict=False)
    adam_eps: float = Field(default=1e-8, gt=0.0)  # AdamW epsilon
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    grad_clip: float = Field(default=1.0, ge=0.0)
    precision: Literal["auto", "bf16-mixed", "fp16-mixed", "fp32"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False
    seed: int = Field(default=1337, ge=0, le=2**63 - 1)
    checkpoint_every: int = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    # each run's final checkpoint kept beside the rotating ones: the last N runs', or "all"
    keep_run_checkpoints: Annotated[int, Field(ge=0)] | Literal["all"] = 0
    eval_every: int = Field(default=500, ge=0)
    replay_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    # share of each run's rows drawn from data.anchor shards (replay_fraction + this < 1)
    anchor_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    # tokens of each run's validation rows frozen for the forgetting matrix (0: no matrix)
    forgetting_eval_tokens: int = Field(default=65536, ge=0)
    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_time: float | None = None
    # steps skipped in a row for a non-finite loss/gradient that stop the run (0: never)
    max_skipped_steps: int = Field(default=5, ge=0)
    tensorboard: bool = False
    wandb: bool = False

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        for b in v:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"each beta must be in [0, 1), got {b}")
        return v

    @field_validator("max_time", mode="before")
    @classmethod
    def _parse_max_time(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            # parse_duration expects str/number; anything else is a plain error, not a crash
            raise ValueError(
                'max_time must be a number of seconds or a string like "90m" or "1h30m"'
            )
        return parse_duration(v)

    @model_validator(mode="after")
    def _check_batches(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} does not divide batch_size "
                f"{self.batch_size} — batch_size is the global batch in rows and must be a "
                "multiple of micro_batch_size"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        if self.replay_fraction + self.anchor_fraction >= 1.0:
            raise ValueError(
                f"replay_fraction {self.replay_fraction} + anchor_fraction "
                f"{self.anchor_fraction} must be below 1 (they are shares of each run's rows; "
                "the rest is new data)"
            )
        return self


class Config(_Strict):
    """A whole run configuration (``configs/<name>.json``)."""

    name: str | None = None
    model: ModelConfig
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and not NAME_PATTERN.match(v):
            raise ValueError(
                f"name {v!r} may only use letters, digits, '.', '_' and '-' (it becomes a "
                "directory name)"
            )
        return v

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.data.seq_len > self.model.max_position_embeddings:
            raise ValueError(
                f"data.seq_len {self.data.seq_len} exceeds model.max_position_embeddings "
                f"{self.model.max_position_embeddings} — lower seq_len or raise the position table"
            )
        if self.checkpoint_dir is None and self.name is not None:
            object.__setattr__(self, "checkpoint_dir", f"checkpoints/{self.name}")
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or f"checkpoints/{self.name}")

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)

    def to_json_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON data (family defaults filled in)."""
        return self.model_dump(mode="json")
