"""``allllm tokenizer train``: train a tokenizer on the config's raw text, write it where the config says.

Texts stream from the raw reader one document (or bounded piece) at a time
into a trainer of :mod:`allllm.tokenizer.training` and are never collected,
so memory stays bounded on gigabytes of text. The result is written
atomically where ``tokenizer.path`` points and loaded back, so the config that
trained it loads it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from allllm.config import Config, DataConfig
from allllm.data.raw import RawSource, iter_batches, resolve_sources
from allllm.errors import DataError, TokenizerError
from allllm.tokenizer.manager import TokenizerManager
from allllm.tokenizer.training import (
    output_path,
    refuse_overwrite,
    resolve_kind,
    train_bpe,
    train_sentencepiece,
)


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
        cfg = self._data_cfg
        for source in self._sources:
            done = 0
            for batch in iter_batches(
                source,
                boundary=cfg.document_boundary,
                text_field=cfg.text_field,
                on_decode_error=cfg.on_decode_error,
                max_record_bytes=cfg.max_document_bytes,
            ):
                self.documents += sum(batch.doc_starts)
                yield from batch.texts
                self._advance(batch.read_bytes - done)
                self.bytes_read += batch.read_bytes - done
                done = batch.read_bytes
        if not self.documents:
            where = ", ".join(cfg.raw_paths)
            raise DataError(f"no text to train a tokenizer on in {where}", "check data.raw_path")


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
