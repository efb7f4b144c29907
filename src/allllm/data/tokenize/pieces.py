"""What flows through the encoder: input pieces, encoded chunks, batches, stage timings.

Apart from ``encode`` (the pipeline) so that the readers (``feed``) and the writers
share these shapes without importing the encoder itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["Batch", "Document", "EncodeTimings", "EncodedChunk", "Pieces"]


class Pieces(NamedTuple):
    """Consecutive pieces of the input: the encoder's unit of work.

    Piece ``i`` starts a document when ``doc_starts[i]``; it ends its document when
    the next piece starts one, or, for the last piece, when ``open`` is False.
    ``nbytes`` is how much input of ``source`` these pieces complete (for progress).
    A document cut between shards (``units.work_units``): ``continues``, the first piece
    goes on with one begun elsewhere (no BOS); ``cut``, the open one ends here, no EOS.
    """

    texts: Sequence[str]
    doc_starts: Sequence[bool]
    open: bool
    nbytes: int
    source: str = ""  # the input these pieces come from (for per-file progress)
    continues: bool = False
    cut: bool = False


@dataclass
class EncodedChunk:
    """Ids of a run of consecutive segments, in stream order, with the input they cover."""

    ids: np.ndarray  # uint32
    progress: list[tuple[str, int]]  # (source, input bytes) these ids complete, in order
    documents: int  # documents that ended inside this chunk (== doc_ends.size)
    # int64 offsets in ``ids`` where those documents end (exclusive, BOS/EOS included)
    doc_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    doc_sources: list[str] = field(default_factory=list)  # the ``Pieces.source`` of each

    @property
    def bytes_done(self) -> int:
        return sum(n for _, n in self.progress)


@dataclass
class EncodeTimings:
    """Seconds per stage (the benchmark's profile; also in ``tokenize --json``): CPU seconds
    of the thread doing the work where stages share the cores with the encoder (so
    contention does not inflate them), wall seconds for the encoder itself."""

    read: float = 0.0  # CPU: reading and decoding the input (the raw reader)
    cut: float = 0.0  # CPU: finding safe cut points, assembling batches
    encode: float = 0.0  # wall: inside the backend's batch call (worker thread)
    convert: float = 0.0  # CPU: lists -> one uint32 array, BOS/EOS inserted (worker thread)
    wait: float = 0.0  # wall: the main thread idle, waiting for the encoder


@dataclass
class Document:
    """The buffered, not yet encoded text of the current document."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    first: bool = True  # the buffer starts the document (gets BOS)
    source: str = ""  # the input it comes from (``Pieces.source``)
    searched: int = 0  # no safe cut before this buffer position
    forcing: bool = False  # no safe cut for max_document_chars: cut at fixed lengths


@dataclass
class Batch:
    texts: list[str] = field(default_factory=list)
    bos: list[bool] = field(default_factory=list)  # put BOS before text i
    eos: list[bool] = field(default_factory=list)  # put EOS after text i
    ends: list[bool] = field(default_factory=list)  # text i ends its document
    doc_sources: list[str] = field(default_factory=list)  # per document ended: its source
    chars: int = 0
    progress: list[tuple[str, int]] = field(default_factory=list)

    def add_progress(self, source: str, nbytes: int) -> None:
        if self.progress and self.progress[-1][0] == source:
            self.progress[-1] = (source, self.progress[-1][1] + nbytes)
        else:
            self.progress.append((source, nbytes))
