"""Training a tokenizer from a stream of texts: a byte-level BPE (Hugging Face) or SentencePiece BPE.

The trainers take any iterable of texts and never collect it, so memory stays
bounded on gigabytes of text: the ``tokenizers`` trainer keeps word counts,
SentencePiece keeps a bounded random sample of sentences
(``input_sentence_size``). Results are written atomically.

This module holds the byte-level BPE trainer; the SentencePiece trainer is
:mod:`allllm.tokenizer.train_sentencepiece`, the output path rules and writes
:mod:`allllm.tokenizer.train_output` (both re-exported here). Reading the
config's raw text into a trainer is :mod:`allllm.use.tokenizer_training`,
the library behind ``allllm tokenizer train`` (the tokenizer layer knows
nothing of the raw reader).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from allllm.errors import TokenizerError
from allllm.tokenizer.train_output import (
    output_path,
    refuse_overwrite,
    resolve_kind,
    write_tokenizer_file,
)
from allllm.tokenizer.train_sentencepiece import sentences_for_sentencepiece, train_sentencepiece

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "output_path",
    "refuse_overwrite",
    "resolve_kind",
    "sentences_for_sentencepiece",
    "train_bpe",
    "train_sentencepiece",
]

BPE_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


# -- trainers -------------------------------------------------------------------------------------


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    out_path: Path,
    *,
    folder: bool = False,
    special_tokens: tuple[str, ...] = BPE_SPECIAL_TOKENS,
    model_max_length: int | None = None,
) -> None:
    """Train a GPT-2-style byte-level BPE and write it as ``out_path`` (a tokenizer.json).

    ``folder`` also writes a ``tokenizer_config.json`` beside it naming EOS and
    PAD, so transformers' AutoTokenizer loads the folder too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small for byte-level BPE",
            f"use at least {minimum} (256 bytes + {len(special_tokens)} special tokens)",
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # allllm shows one progress bar, over bytes read
    )
    tok.train_from_iterator(texts, trainer=trainer)
    write_tokenizer_file(out_path, tok.to_str(pretty=True))
    if folder:
        sidecar = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": special_tokens[0],
            "pad_token": special_tokens[1] if len(special_tokens) > 1 else None,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        }
        if model_max_length is not None:
            sidecar["model_max_length"] = model_max_length
        write_tokenizer_file(
            out_path.parent / "tokenizer_config.json", json.dumps(sidecar, indent=2) + "\n"
        )
