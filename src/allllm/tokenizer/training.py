"""``allllm tokenizer train``: a byte-level BPE (Hugging Face) or SentencePiece BPE from the raw text.

Texts stream from the raw reader one document (or bounded piece) at a time
and are never collected, so memory stays bounded on gigabytes of text: the
``tokenizers`` trainer keeps word counts, SentencePiece keeps a bounded random
sample of sentences (``input_sentence_size``). The result is written
atomically where ``tokenizer.path`` points, so the config that trained it
loads it unchanged.

This module holds the byte-level BPE trainer, the raw-text feed and the
entry point :func:`train_tokenizer_from_config`; the SentencePiece trainer is
:mod:`allllm.tokenizer.train_sentencepiece`, the output path rules and writes
:mod:`allllm.tokenizer.train_output` (re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from allllm.errors import DataError, TokenizerError
from allllm.tokenizer.train_output import (
    output_path,
    refuse_overwrite,
    resolve_kind,
    write_tokenizer_file,
)
from allllm.tokenizer.train_sentencepiece import sentences_for_sentencepiece, train_sentencepiece

if TYPE_CHECKING:
    from allllm.config import Config, DataConfig
    from allllm.data.raw import RawSource

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "TrainResult",
    "output_path",
    "resolve_kind",
    "sentences_for_sentencepiece",
    "train_bpe",
    "train_sentencepiece",
    "train_tokenizer_from_config",
]

BPE_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


@dataclass(frozen=True)
class TrainResult:
    """What was trained: where it is, its kind, its id range and how much raw input it read.

    ``documents`` follows ``data.document_boundary``; ``bytes_read`` counts bytes
    of the raw files (compressed bytes for ``.gz``).
    """

    path: Path
    kind: str
    vocab_size: int
    documents: int
    bytes_read: int


class _RawFeed:
    """The raw sources' texts for a trainer, counting documents and bytes read and moving the bar.

    Reads through the raw reader's batch API, which says where each document
    starts and how many bytes of the file (compressed, for ``.gz``) are read.
    """

    def __init__(
        self, data_cfg: DataConfig, sources: list[RawSource], advance: Callable[[int], None]
    ) -> None:
        self._data_cfg = data_cfg
        self._sources = sources
        self._advance = advance
        self.documents = 0
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        from allllm.data.raw import iter_batches

        cfg = self._data_cfg
        for source in self._sources:
            done = 0
            for batch in iter_batches(
                source,
                boundary=cfg.document_boundary,
                text_field=cfg.text_field,
                on_decode_error=cfg.on_decode_error,
            ):
                self.documents += sum(batch.doc_starts)
                yield from batch.texts
                self._advance(batch.read_bytes - done)
                self.bytes_read += batch.read_bytes - done
                done = batch.read_bytes
        if not self.documents:
            where = ", ".join(cfg.raw_paths)
            raise DataError(f"no text to train a tokenizer on in {where}", "check data.raw_path")


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


# -- the library entry point of `allllm tokenizer train` ---------------------------------------


@contextmanager
def _byte_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("training tokenizer"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total or None)
        yield lambda n: progress.advance(task, n)


def train_tokenizer_from_config(
    cfg: Config,
    vocab_size: int | None = None,
    kind: str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Train a tokenizer on ``cfg.data.raw_path`` and write it where ``cfg.tokenizer.path`` says.

    ``vocab_size`` defaults to ``model.vocab_size`` and may not exceed it.
    Existing files are kept unless ``force``. The result is loaded back through
    TokenizerManager, so a config that trains also loads.
    """
    from allllm.data.raw import resolve_sources
    from allllm.tokenizer.manager import TokenizerManager

    tok_cfg = cfg.tokenizer
    kind = resolve_kind(tok_cfg.backend, kind)
    out, folder = output_path(tok_cfg, kind)
    limit = cfg.model.vocab_size
    size = limit if vocab_size is None else vocab_size
    if size > limit:
        raise TokenizerError(
            f"vocab_size {size} exceeds model.vocab_size {limit}",
            "lower --vocab-size or raise model.vocab_size",
        )
    if not force:
        refuse_overwrite([out, out.parent / "tokenizer_config.json"] if folder else [out])

    sources = resolve_sources(cfg.data.raw_paths)
    with _byte_progress(sum(s.size for s in sources), show_progress) as advance:
        feed = _RawFeed(cfg.data, sources, advance)
        if kind == "bpe":
            train_bpe(
                feed,
                size,
                out,
                folder=folder,
                model_max_length=cfg.model.max_position_embeddings,
            )
        else:
            train_sentencepiece(feed, size, out)

    manager = TokenizerManager.from_config(tok_cfg)
    manager.check_vocab(limit)
    return TrainResult(
        path=out,
        kind=kind,
        vocab_size=manager.vocab_size,
        documents=feed.documents,
        bytes_read=feed.bytes_read,
    )
