"""Hugging Face ``config.json`` ↔ our ModelConfig, and the weight-name map between them.

Two HF architectures compute what our Transformer computes: PhiForCausalLM
(LayerNorm, parallel residual, GELU MLP, partial rotary, biased head) and
LlamaForCausalLM (RMSNorm, pre-norm, SwiGLU, GQA, optional tied embeddings).
Everything these files hold that we do not implement (RoPE scaling, a
head_dim other than hidden/heads, ...) is refused with a message, never
silently dropped: a model that loads must compute what it computed before.

Both the transformers 4 (top-level ``rope_theta``) and 5 (``rope_parameters``)
layouts are read, and both are written, so either version loads our exports.
No torch import here: the config checks run before any weights are touched.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ValidationError

from allllm.config import ModelConfig, describe_validation_error
from allllm.errors import CheckpointError, ConfigError

Family = Literal["phi", "llama"]

SUPPORTED_ARCHITECTURES: dict[str, Family] = {
    "PhiForCausalLM": "phi",
    "LlamaForCausalLM": "llama",
}

# HF activation names (transformers.activations.ACT2FN) that compute our activations exactly.
HF_ACTIVATIONS: dict[str, str] = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
# ... and the names we write: phi-2's own "gelu_new" for phi, the fused kernel's name for llama.
OUR_ACTIVATIONS: dict[Family, dict[str, str]] = {
    "phi": {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"},
    "llama": {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu", "relu": "relu"},
}

# Module names: ours (inside ``blocks.{i}.``) → HF's (inside ``model.layers.{i}.``).
_LAYER_NAMES: dict[Family, dict[str, list[str]]] = {
    "phi": {
        "norm1": ["input_layernorm"],
        "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "attn.proj": ["self_attn.dense"],
        "attn.q_norm": ["self_attn.q_layernorm"],
        "attn.k_norm": ["self_attn.k_layernorm"],
        "mlp.fc1": ["mlp.fc1"],
        "mlp.fc2": ["mlp.fc2"],
    },
    "llama": {
        "norm1": ["input_layernorm"],
        "norm2": ["post_attention_layernorm"],
        "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "attn.proj": ["self_attn.o_proj"],
        "mlp.gate_up": ["mlp.gate_proj", "mlp.up_proj"],
        "mlp.down": ["mlp.down_proj"],
    },
}
_TOP_NAMES: dict[Family, dict[str, str]] = {
    "phi": {"embed": "model.embed_tokens", "norm_f": "model.final_layernorm", "lm_head": "lm_head"},
    "llama": {"embed": "model.embed_tokens", "norm_f": "model.norm", "lm_head": "lm_head"},
}
# HF checkpoint keys that hold no weights (old checkpoints saved rotary buffers).
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_names(our_key: str, family: Family) -> list[str]:
    """The HF keys whose tensors, stacked along dim 0, make our parameter ``our_key``."""
    module, _, param = our_key.rpartition(".")
    if module.startswith("blocks."):
        _, index, inner = module.split(".", 2)
        names = _LAYER_NAMES[family].get(inner)
        if names is None:
            raise KeyError(f"{our_key} has no counterpart in Hugging Face {family} checkpoints")
        return [f"model.layers.{index}.{name}.{param}" for name in names]
    return [f"{_TOP_NAMES[family][module]}.{param}"]


def split_sizes(our_key: str, cfg: ModelConfig) -> list[int]:
    """Rows of each HF piece in our (possibly fused) parameter ``our_key``."""
    if ".attn.qkv." in our_key:
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return [q, kv, kv]
    if ".mlp.gate_up." in our_key:
        return [cfg.intermediate_size, cfg.intermediate_size]
    return []


# -- reading -----------------------------------------------------------------------------------


def hf_family(hf: dict[str, Any], source: str) -> Family:
    """Which supported architecture a config.json describes; anything else is refused."""
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    model_type = hf.get("model_type")
    if not archs and model_type in ("phi", "llama"):
        return model_type  # type: ignore[return-value]
    named = ", ".join(archs) if archs else f"model_type {model_type!r}"
    raise CheckpointError(
        f"{source}: architecture {named} is not supported",
        f"allllm loads {', '.join(SUPPORTED_ARCHITECTURES)} checkpoints",
    )


def _rope(hf: dict[str, Any], source: str, family: Family) -> tuple[float, float | None]:
    """(rope_theta, partial_rotary_factor) from either config layout; scaled RoPE is refused."""
    theta = hf.get("rope_theta", 10000.0)
    partial = hf.get("partial_rotary_factor")
    for key in ("rope_parameters", "rope_scaling"):
        params = hf.get(key)
        if not params:
            continue
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: {key} must be an object, got {params!r}")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(
                f"{source}: RoPE scaling {rope_type!r} ({key}) is not supported",
                "allllm implements plain RoPE; use a checkpoint without rope scaling",
            )
        theta = params.get("rope_theta", theta)
        partial = params.get("partial_rotary_factor", partial)
    if family == "llama":
        partial = 1.0  # LlamaForCausalLM rotates the whole head whatever the config says
    return float(theta), partial


def _check_unsupported(hf: dict[str, Any], source: str, family: Family) -> None:
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        raise CheckpointError(
            f"{source}: head_dim {head_dim} differs from hidden_size/num_attention_heads",
            "allllm needs head_dim = hidden_size / num_heads",
        )
    if hf.get("quantization_config"):
        raise CheckpointError(
            f"{source}: quantized checkpoints are not supported", "use the unquantized weights"
        )
    if family == "llama" and bool(hf.get("attention_bias", False)) != bool(
        hf.get("mlp_bias", False)
    ):
        raise CheckpointError(
            f"{source}: attention_bias and mlp_bias differ",
            "allllm has one `bias` switch for attention and MLP projections",
        )
    act = hf.get("hidden_act", "gelu_new" if family == "phi" else "silu")
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(
            f"{source}: hidden_act {act!r} is not supported",
            f"supported: {', '.join(HF_ACTIVATIONS)}",
        )


def model_config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """Our ModelConfig for a Phi/Llama ``config.json`` (already parsed), or a one-line error."""
    family = hf_family(hf, source)
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"]
    absent = [key for key in (*required, "num_attention_heads") if hf.get(key) is None]
    if absent:
        raise CheckpointError(
            f"{source}: missing {', '.join(absent)}", "is this the config.json of a model?"
        )
    _check_unsupported(hf, source, family)
    theta, partial = _rope(hf, source, family)
    heads = hf.get("num_attention_heads")
    fields: dict[str, Any] = {
        "arch": family,
        "vocab_size": hf.get("vocab_size"),
        "hidden_size": hf.get("hidden_size"),
        "intermediate_size": hf.get("intermediate_size"),
        "num_layers": hf.get("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "max_position_embeddings": hf.get("max_position_embeddings", 2048),
        "rope_theta": theta,
        "activation": HF_ACTIVATIONS[
            hf.get("hidden_act", "gelu_new" if family == "phi" else "silu")
        ],
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "init_from": None,
    }
    if family == "phi":
        fields.update(
            norm="layernorm",
            mlp="gelu",
            parallel_residual=True,
            bias=True,
            lm_head_bias=True,
            partial_rotary_factor=0.5 if partial is None else partial,
            norm_eps=hf.get("layer_norm_eps", 1e-5),
            qk_layernorm=bool(hf.get("qk_layernorm", False)),
            dropout=float(hf.get("resid_pdrop") or 0.0),
        )
    else:
        fields.update(
            norm="rmsnorm",
            mlp="swiglu",
            parallel_residual=False,
            bias=bool(hf.get("attention_bias", False)),
            lm_head_bias=False,
            partial_rotary_factor=1.0,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            qk_layernorm=False,
            dropout=float(hf.get("attention_dropout") or 0.0),
        )
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as exc:
        raise CheckpointError(
            describe_validation_error(exc, f"{source} (as allllm model)")
        ) from None


# -- writing -----------------------------------------------------------------------------------


def _phi_blockers(cfg: ModelConfig) -> list[str]:
    wanted = {"norm": "layernorm", "mlp": "gelu", "parallel_residual": True}
    return [
        f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v
    ]


def _llama_blockers(cfg: ModelConfig) -> list[str]:
    wanted = {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "parallel_residual": False,
        "partial_rotary_factor": 1.0,
        "qk_layernorm": False,
        "lm_head_bias": False,
    }
    return [
        f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v
    ]


def hf_family_for(cfg: ModelConfig) -> Family:
    """The HF architecture that computes ``cfg`` exactly, or a ConfigError naming the obstacles.

    Phi always has biases: a phi-style config without them is written with zero
    biases (same function).
    """
    phi, llama = _phi_blockers(cfg), _llama_blockers(cfg)
    if not phi:
        return "phi"
    if not llama:
        return "llama"
    blockers, name = (phi, "PhiForCausalLM") if cfg.arch == "phi" else (llama, "LlamaForCausalLM")
    raise ConfigError(
        f"no Hugging Face architecture computes this model: {name} needs {'; '.join(blockers)}",
        "change those model fields to export it",
    )


def hf_config_from_model(
    cfg: ModelConfig,
    *,
    dtype_name: str = "float32",
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content for ``cfg`` (readable by transformers 4.45+ and 5)."""
    family = hf_family_for(cfg)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    data: dict[str, Any] = {
        "architectures": ["PhiForCausalLM" if family == "phi" else "LlamaForCausalLM"],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": OUR_ACTIVATIONS[family][cfg.activation],
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if family == "phi":
        rope["partial_rotary_factor"] = cfg.partial_rotary_factor
        data.update(
            partial_rotary_factor=cfg.partial_rotary_factor,
            layer_norm_eps=cfg.norm_eps,
            qk_layernorm=cfg.qk_layernorm,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attention_dropout=cfg.dropout,
        )
    else:
        data.update(
            rms_norm_eps=cfg.norm_eps,
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            head_dim=cfg.head_dim,
            pretraining_tp=1,
            attention_dropout=cfg.dropout,
        )
    data["rope_parameters"] = rope
    return data


# -- comparing ---------------------------------------------------------------------------------

# Fields that may differ between a config and the checkpoint it starts from: no
# weight depends on the length of the position table (RoPE has none), and
# ``arch`` only picks defaults for the fields that are compared.
MAY_DIFFER = ("arch", "max_position_embeddings")


def architecture_differences(ours: ModelConfig, theirs: ModelConfig) -> list[str]:
    """``field: config X, checkpoint Y`` for every architecture field that disagrees."""
    a, b = ours.architecture(), theirs.architecture()
    out = []
    for key in a:
        if key in MAY_DIFFER:
            continue
        x, y = a[key], b[key]
        same = math.isclose(x, y, rel_tol=1e-9) if isinstance(x, float) else x == y
        if not same:
            out.append(f"{key}: config {x!r}, checkpoint {y!r}")
    return out
