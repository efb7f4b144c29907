"""The SentencePiece half of ``allllm tokenizer train``: a Llama-style SentencePiece BPE.

SentencePiece keeps a bounded random sample of sentences
(``input_sentence_size``), so memory stays bounded on gigabytes of text; long
lines are cut into pieces it will not drop. Kept apart from the byte-level BPE
trainer (:mod:`allllm.tokenizer.training`, which re-exports it); the entry point
:mod:`allllm.use.tokenizer_training` calls :func:`train_sentencepiece`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from allllm.errors import TokenizerError
from allllm.tokenizer._shared import default_num_threads
from allllm.tokenizer.train_output import write_tokenizer_file

SP_MAX_SENTENCE_BYTES = 4192  # SentencePiece's default; longer sentences would be dropped
SP_INPUT_SENTENCES = 2_000_000  # the bounded random sample SentencePiece trains on


class _KeepError:
    """Passes ``texts`` through and keeps the exception that ended them.

    SentencePiece turns an exception raised inside its iterator into a generic
    RuntimeError; keeping the original lets a DataError reach the user intact.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._texts
        except BaseException as exc:
            self.error = exc
            raise


def sentences_for_sentencepiece(
    texts: Iterable[str], max_bytes: int = SP_MAX_SENTENCE_BYTES
) -> Iterator[str]:
    """Non-empty lines, long ones cut into pieces of at most ``max_bytes`` UTF-8 bytes.

    SentencePiece silently skips sentences longer than its limit; cutting keeps
    their text (at a character boundary) and bounds the memory of its sample.
    """
    max_bytes = max(max_bytes, 4)  # room for any one character
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if len(line) * 4 <= max_bytes:  # fits whatever its characters
                yield line
                continue
            data = line.encode("utf-8", "surrogatepass")
            start = 0
            while start < len(data):
                end = min(start + max_bytes, len(data))
                while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character
                    end -= 1
                yield data[start:end].decode("utf-8", "surrogatepass")
                start = end


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    out_path: Path,
    *,
    input_sentence_size: int = SP_INPUT_SENTENCES,
    max_sentence_length: int = SP_MAX_SENTENCE_BYTES,
    num_threads: int | None = None,
) -> None:
    """Train a SentencePiece BPE (Llama-style: byte fallback, no normalization) to ``out_path``.

    The text is kept exactly (identity normalization, whitespace kept), so
    decode(encode(text)) == text. Ids: unk 0, BOS 1, EOS 2, PAD 3.
    """
    import sentencepiece as spm

    minimum = 256 + 4 + 1  # byte pieces, unk/bos/eos/pad, and at least one learned piece
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small for SentencePiece with byte fallback",
            f"use at least {minimum} (256 bytes + 4 special pieces + the text's characters)",
        )
    feed = _KeepError(texts)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences_for_sentencepiece(feed, max_sentence_length),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus gives fewer pieces, as BPE does
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            train_extremely_large_corpus=False,
            num_threads=num_threads or default_num_threads(),
            minloglevel=2,
        )
    except RuntimeError as exc:
        if feed.error is not None:
            raise feed.error from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "training failed"
        raise TokenizerError(
            f"SentencePiece training failed: {first.removeprefix('INTERNAL: ')[:300]}",
            "adjust --vocab-size (or give more text)",
        ) from None
    write_tokenizer_file(out_path, model.getvalue())
