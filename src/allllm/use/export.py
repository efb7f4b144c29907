"""``allllm export``: a checkpoint as a Hugging Face model directory.

The directory holds ``config.json`` and ``model.safetensors`` (written by
:func:`allllm.hf.to_hf`: PhiForCausalLM or LlamaForCausalLM, whichever
computes the model exactly), ``generation_config.json`` (BOS/EOS/PAD ids),
the tokenizer files (:mod:`allllm.hf.tokenizer_export`) and ``allllm_export.json``
(where it came from: config, step, tokens seen, tokenizer fingerprint).
``AutoModelForCausalLM.from_pretrained(DIR)`` gives the logits allllm gives.

A non-empty DIR is refused unless ``force``; with ``force`` the files an export
writes are replaced and anything else in DIR is left alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm import __version__
from allllm.errors import CheckpointError
from allllm.util.atomic import atomic_write_text

if TYPE_CHECKING:
    from allllm.config import Config

DTYPES = ("fp32", "bf16", "fp16")
PROVENANCE_FILE = "allllm_export.json"
# files a previous export may have left that this one might not rewrite (with --force)
STALE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)

Warn = Callable[[str], None]


@dataclass
class ExportResult:
    """What ``export`` wrote (``--json``-ready)."""

    path: str
    step: int
    tokens_seen: int
    dtype: str
    architecture: str  # PhiForCausalLM | LlamaForCausalLM
    files: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # the backend whose files were written, None if none
    note: str | None = None  # one line when the tokenizer could not be exported fully

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force`` (before any work is done)."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory", "choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckpointError(
            f"{out} is not empty",
            "choose a new or empty folder, or pass --force to replace the exported files in it",
        )


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create ``out`` and prove it is writable (one-line error if not)."""
    check_out_dir(out, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".allllm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"cannot write to {out}: {exc.strerror or exc}",
            "choose a folder you can write to (--out)",
        ) from None


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def export_model(
    cfg: Config,
    out: str | Path,
    *,
    step: int | None = None,
    dtype: str = "fp32",
    force: bool = False,
    warn: Warn | None = None,
) -> ExportResult:
    """Write the model of ``cfg`` at ``step`` (default: latest) as a Hugging Face folder."""
    from allllm.hf.config_map import hf_family_for
    from allllm.hf.tokenizer_export import export_tokenizer
    from allllm.hf.weights_out import to_hf
    from allllm.use.trained import load_trained

    torch_dtype = _torch_dtype(dtype)
    family = hf_family_for(cfg.model)  # an architecture HF cannot compute fails before any I/O
    out_dir = Path(out)
    check_out_dir(out_dir, force)
    trained = load_trained(cfg, step, device="cpu", warn=warn)
    prepare_out_dir(out_dir, force)
    if force:
        for name in STALE_FILES:
            (out_dir / name).unlink(missing_ok=True)
    tok = trained.tokenizer
    to_hf(
        trained.model,
        out_dir,
        torch_dtype,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        overwrite=force,
    )
    tok_export = export_tokenizer(cfg.tokenizer, tok, out_dir)
    generation = {
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
    }
    provenance = {
        "allllm_version": __version__,
        "config": cfg.name,
        "step": trained.step,
        "tokens_seen": trained.tokens_seen,
        "checkpoint": str(trained.checkpoint.path),
        "dtype": dtype,
        "tokenizer": {
            "backend": cfg.tokenizer.backend,
            "path": cfg.tokenizer.path,
            "fingerprint": tok.fingerprint,
            "add_bos": cfg.tokenizer.add_bos,
            "add_eos": cfg.tokenizer.add_eos,
            "exported": bool(tok_export.files),
        },
    }
    try:
        atomic_write_text(
            out_dir / "generation_config.json", json.dumps(generation, indent=2) + "\n"
        )
        atomic_write_text(out_dir / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    return ExportResult(
        path=str(out_dir),
        step=trained.step,
        tokens_seen=trained.tokens_seen,
        dtype=dtype,
        architecture="PhiForCausalLM" if family == "phi" else "LlamaForCausalLM",
        files=sorted(p.name for p in out_dir.iterdir() if p.is_file()),
        tokenizer=tok_export.kind if tok_export.files else None,
        note=tok_export.note,
    )
