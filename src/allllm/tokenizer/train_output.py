"""Where ``allllm tokenizer train`` writes: the kind for a backend, output path rules, atomic writes.

Kept apart so that both trainers share them without an import circle:
:mod:`allllm.tokenizer.training` (byte-level BPE) imports
:mod:`allllm.tokenizer.train_sentencepiece`, never the other way round, and
both import this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from allllm.errors import TokenizerError

if TYPE_CHECKING:
    from allllm.config import TokenizerConfig

#: training kind -> the tokenizer.backend that loads its output
KIND_BACKEND = {"bpe": "hf", "sentencepiece": "sentencepiece"}
BACKEND_KIND = {backend: kind for kind, backend in KIND_BACKEND.items()}


# -- output locations -----------------------------------------------------------------------------


def resolve_kind(backend: str, kind: str | None) -> str:
    """The training kind for ``tokenizer.backend`` (an explicit kind must match it)."""
    if backend not in BACKEND_KIND:
        raise TokenizerError(
            f"cannot train a tokenizer for backend {backend!r}",
            'set tokenizer.backend to "hf" (byte-level BPE) or "sentencepiece" and tokenizer.path '
            "to where the new tokenizer should go",
        )
    if kind is None:
        return BACKEND_KIND[backend]
    if kind not in KIND_BACKEND:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}", "use bpe or sentencepiece")
    if KIND_BACKEND[kind] != backend:
        raise TokenizerError(
            f"a {kind} tokenizer is loaded by backend {KIND_BACKEND[kind]!r}, but "
            f"tokenizer.backend is {backend!r}",
            f'set tokenizer.backend to "{KIND_BACKEND[kind]}" or drop --kind',
        )
    return kind


def output_path(tok_cfg: TokenizerConfig, kind: str) -> tuple[Path, bool]:
    """Where the trained tokenizer goes, and whether that is a tokenizer folder (hf only)."""
    from allllm.tokenizer.hf import looks_like_hub_id

    raw = str(tok_cfg.path or "")
    path = Path(raw).expanduser()
    if not raw:
        raise TokenizerError("tokenizer.path is empty", "set it to where the tokenizer should go")
    if kind == "sentencepiece":
        if path.suffix != ".model" or path.is_dir():
            raise TokenizerError(
                f"tokenizer.path {raw}: a SentencePiece tokenizer is written to a .model file",
                "set tokenizer.path to e.g. tokenizers/mine.model",
            )
        return path, False
    if path.is_dir():
        return path / "tokenizer.json", True
    if path.suffix == ".json":
        return path, False
    if not path.suffix and not path.exists():
        if looks_like_hub_id(raw):
            raise TokenizerError(
                f"tokenizer.path {raw!r} looks like a Hugging Face Hub id, not a local folder",
                f"write ./{raw} for a new local folder, or name a .json file",
            )
        return path / "tokenizer.json", True
    raise TokenizerError(
        f"tokenizer.path {raw}: a Hugging Face tokenizer is written to a .json file or a folder",
        "set tokenizer.path to e.g. tokenizers/mine/tokenizer.json or tokenizers/mine",
    )


def write_tokenizer_file(path: Path, data: str | bytes) -> None:
    """Write atomically (the old file, if any, survives a crash); OSError becomes one line."""
    from allllm.util.atomic import atomic_write_bytes, atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            atomic_write_bytes(path, data)
        else:
            atomic_write_text(path, data)
    except OSError as exc:
        raise TokenizerError(
            f"{path}: cannot write the tokenizer: {exc.strerror or exc}",
            "choose a writable tokenizer.path",
        ) from None


def refuse_overwrite(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.exists():
            raise TokenizerError(
                f"{p} already exists", "pass --force to replace it, or change tokenizer.path"
            )
