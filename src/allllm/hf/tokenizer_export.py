"""Tokenizer files for an exported model, so ``AutoTokenizer.from_pretrained(DIR)`` loads them.

What each backend becomes (the ids are the ones allllm trained with, for the same text):

- ``hf``: the tokenizer itself — a folder or Hub id is re-saved through ``AutoTokenizer``
  (its class and settings kept); a bare ``tokenizer.json`` is wrapped with the BOS/EOS/PAD
  tokens allllm uses.
- ``byte``: an equivalent byte-level tokenizer built here: the 256 bytes as ids 0-255
  (GPT-2's printable byte alphabet, no merges) plus BOS 256, EOS 257, PAD 258.
- ``sentencepiece``: ``tokenizer.model`` is copied, and ``tokenizer.json`` is built with
  transformers' SentencePiece converter, which follows the model's own normalizer settings
  (it reads the model with ``protobuf``; without it, only ``tokenizer.model`` is written
  and a note says how to get the rest).
- ``tiktoken``: no Hugging Face form keeps tiktoken's special-token ids, so none is
  written; a note says so.

The HF wrappers match special-token text (``<|endoftext|>``) in input as the special
token, as every Hugging Face tokenizer does; allllm itself encodes such text as text.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.errors import TokenizerError

if TYPE_CHECKING:
    from allllm.config import TokenizerConfig
    from allllm.tokenizer.manager import TokenizerManager

BYTE_SPECIALS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}  # ids 256, 257, 258


@dataclass
class TokenizerExport:
    """What was written for the tokenizer; ``note`` is one line when something could not be."""

    kind: str  # hf | byte | sentencepiece | tiktoken
    files: list[str]
    note: str | None = None


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def byte_tokenizer_object() -> Any:
    """A ``tokenizers.Tokenizer`` whose ids are allllm's byte tokenizer's (UTF-8 bytes + 3 specials)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = byte_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BYTE_SPECIALS[k] for k in ("bos", "eos", "pad")]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _save_fast(tok_object: Any, out: Path, names: dict[str, str | None]) -> list[str]:
    from transformers import PreTrainedTokenizerFast

    kwargs = {f"{role}_token": name for role, name in names.items() if name is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok_object, **kwargs)
    return _saved(fast.save_pretrained(str(out)))


def _saved(paths: Any) -> list[str]:
    return sorted({Path(p).name for p in paths if Path(p).is_file()})


def _special_names(tokenizer: TokenizerManager, id_to_token: Any) -> dict[str, str | None]:
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    return {role: (id_to_token(i) if i is not None else None) for role, i in ids.items()}


def _export_hf(cfg: TokenizerConfig, tokenizer: TokenizerManager, out: Path) -> list[str]:
    from allllm.tokenizer.hf import load_hf_tokenizer

    path = Path(str(cfg.path)).expanduser()
    if path.is_file() or (
        path.is_dir()
        and (path / "tokenizer.json").is_file()
        and not (path / "tokenizer_config.json").exists()
    ):
        tok_object, _named = load_hf_tokenizer(cfg)  # a bare tokenizer.json
        return _save_fast(tok_object, out, _special_names(tokenizer, tok_object.id_to_token))
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(
        str(path) if path.is_dir() else str(cfg.path),
        trust_remote_code=cfg.trust_remote_code,
        local_files_only=True,  # loading the config's tokenizer already put it here
    )
    return _saved(auto.save_pretrained(str(out)))


def _export_sentencepiece(
    cfg: TokenizerConfig, tokenizer: TokenizerManager, out: Path
) -> tuple[list[str], str | None]:
    source = Path(str(cfg.path)).expanduser()
    shutil.copyfile(source, out / "tokenizer.model")
    try:
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

        proto = import_protobuf().ModelProto()
        build = SpmConverter.build_tokenizer_from_spm_proto
    except (ImportError, AttributeError):
        return ["tokenizer.model"], (
            "the SentencePiece tokenizer was copied as tokenizer.model only: `pip install "
            "protobuf` (and transformers >= 5) and export again to also write tokenizer.json"
        )
    proto.ParseFromString(source.read_bytes())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab: Any = (
        pieces if proto.trainer_spec.model_type == 1 else {p: i for i, (p, _) in enumerate(pieces)}
    )
    tok_object = build(proto, vocab, legacy=False)
    if tok_object is None:
        return ["tokenizer.model"], (
            "the SentencePiece model type has no Hugging Face form: copied as tokenizer.model only"
        )
    from tokenizers import AddedToken

    control = [p.piece for p in proto.pieces if p.type in (2, 3)]  # unknown, control
    tok_object.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in control])
    names = _special_names(tokenizer, tok_object.id_to_token)
    unk = proto.trainer_spec.unk_id
    names["unk"] = tok_object.id_to_token(unk) if 0 <= unk < len(pieces) else None
    return sorted({"tokenizer.model", *_save_fast(tok_object, out, names)}), None


def export_tokenizer(
    cfg: TokenizerConfig, tokenizer: TokenizerManager, out: Path
) -> TokenizerExport:
    """Write the tokenizer files for ``cfg`` into ``out`` (see the module doc)."""
    backend = cfg.backend
    try:
        if backend == "byte":
            names: dict[str, str | None] = dict(BYTE_SPECIALS)
            return TokenizerExport("byte", _save_fast(byte_tokenizer_object(), out, names))
        if backend == "hf":
            return TokenizerExport("hf", _export_hf(cfg, tokenizer, out))
        if backend == "sentencepiece":
            files, note = _export_sentencepiece(cfg, tokenizer, out)
            return TokenizerExport("sentencepiece", files, note)
    except OSError as exc:
        raise TokenizerError(
            f"cannot write the tokenizer files to {out}: {exc.strerror or exc}"
        ) from None
    return TokenizerExport(
        backend,
        [],
        f"the {backend} tokenizer has no Hugging Face form: the model is exported without "
        "tokenizer files (encode text with tiktoken and feed the ids)",
    )
