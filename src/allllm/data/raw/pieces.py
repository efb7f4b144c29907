"""The pieces a source is read in, and the builder that collects them into batches.

``TextPiece`` is one piece with its byte range (what ``iter_pieces`` yields),
``PieceBatch`` consecutive pieces as parallel lists (what ``iter_batches`` and the
splitter yield), and ``BatchBuilder`` the bookkeeping that turns the splitter's
text and offsets into batches. Apart from the splitter so that it reads as the
scan alone, and so that the readers can use the piece types without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from allllm.data.raw.byte_stream import split_cut


@dataclass(frozen=True)
class TextPiece:
    """Part of one document, with the bytes it came from.

    ``start``/``end`` are offsets in the source's byte stream (the file itself, or
    the decompressed stream of a ``.gz``). A source's pieces tile the range read:
    each starts where the one before it ends, skipped bytes (blank lines,
    whitespace-only documents, line ends) count to a neighbouring document.
    """

    text: str
    doc_start: bool  # first piece of a document
    doc_end: bool  # last piece of a document
    start: int
    end: int


@dataclass(frozen=True)
class PieceBatch:
    """Consecutive pieces of one source as parallel lists: the fast path for bulk consumers.

    Piece ``i`` is ``texts[i]`` over bytes ``[ends[i-1], ends[i])`` (the first from
    ``start``); ``doc_starts[i]`` says it is the first piece of its document. A piece
    is the last of its document when the next piece starts one, or, for the batch's
    last piece, when the batch is not ``open`` (its document goes on in the next
    batch). ``skipped`` counts the empty records passed over since the batch before.
    ``read_bytes`` is how far the file on disk has been read (compressed bytes
    for ``.gz``), for progress bars over ``RawSource.size``.
    """

    texts: list[str]
    ends: list[int]
    doc_starts: list[bool]
    start: int
    open: bool
    read_bytes: int
    skipped: int = 0  # records (JSON, Parquet, Arrow) whose text was empty or whitespace

    @property
    def end(self) -> int:
        return self.ends[-1]


class BatchBuilder:
    """Collects the pieces of the next batch.

    The open document's latest piece is ``held`` back until it is known whether it is
    the document's last; the newest finished piece stays back too (``flush`` keeps it)
    so the very last piece of the range can still be stretched to the range's end. A
    whitespace-only run that may or may not belong to a document is ``tentative``.
    """

    def __init__(
        self, start: int, cap: int, reread: Callable[[int, int], Iterable[tuple[str, int]]]
    ):
        self.texts: list[str] = []
        self.ends: list[int] = []
        self.firsts: list[bool] = []  # the piece starts its document
        self.batch_start = start
        self.covered = start  # end of the newest piece
        self.held: str | None = None
        self.held_end = 0
        self.held_first = True
        self.tent: list[tuple[str, int]] | None = None
        self.tent_prefix = ""
        self.tent_start = self.tent_end = self.tent_size = 0
        self.tent_over = False  # too big to keep: read it again if it turns out to be text
        self.cap = cap
        self.reread = reread
        self.skipped = 0  # empty records since the last batch (handed on by flush)

    def _final(self, text: str, end: int, first: bool) -> None:
        self.texts.append(text)
        self.ends.append(end)
        self.firsts.append(first)

    def add(self, text: str, end: int) -> None:
        """Text of the open document (a new one if none is open) up to byte ``end``."""
        if self.tent is not None:
            self._commit()
        self._add(text, end)

    def _add(self, text: str, end: int) -> None:
        first = self.held is None
        if not first:
            self._final(self.held, self.held_end, self.held_first)  # type: ignore[arg-type]
        self.held, self.held_end, self.held_first, self.covered = text, end, first, end

    def extend(self, end: int) -> None:
        """The open document also covers bytes that add no text (its line end)."""
        self.held_end = self.covered = end

    def close(self) -> None:
        """The open document (if any) ends; a tentative run was not part of it."""
        self.tent = None
        if self.held is not None:
            self._final(self.held, self.held_end, self.held_first)
            self.held = None

    def whole(self, texts: list[str], ends: list[int]) -> None:
        """Whole one-piece documents (no document may be open)."""
        if texts:
            self.texts += texts
            self.ends += ends
            self.firsts += [True] * len(texts)
            self.covered = ends[-1]

    def big(self, value: str, end: int, chunk: int) -> None:
        """One record text longer than ``chunk`` bytes, as a document of pieces of at most
        ``chunk`` bytes (cut between characters); only the last one covers its bytes."""
        data = value.encode("utf-8")
        i = 0
        while i < len(data):
            j = len(data) if len(data) - i <= chunk else split_cut(data, i, i + chunk)
            self.add(data[i:j].decode("utf-8"), end if j == len(data) else self.covered)
            i = j
        self.close()

    def maybe(self, text: str, start: int, end: int, prefix: str = "") -> None:
        """Whitespace that belongs to the document only if text follows before it ends."""
        if self.tent is None:
            self.tent, self.tent_prefix, self.tent_start = [], prefix, start
            self.tent_size, self.tent_over = 0, False
        self.tent_end = end
        if not self.tent_over:
            self.tent_size += end - start
            if self.tent_size > self.cap:
                self.tent, self.tent_over = [], True
            else:
                self.tent.append((text, end))

    def _commit(self) -> None:
        parts = self.reread(self.tent_start, self.tent_end) if self.tent_over else self.tent
        prefix, self.tent = self.tent_prefix, None
        for text, end in parts:  # type: ignore[union-attr]
            self._add(prefix + text, end)
            prefix = ""

    def flush(self, read_bytes: int, final_end: int | None = None) -> PieceBatch | None:
        texts, ends, firsts = self.texts, self.ends, self.firsts
        if final_end is not None:  # the range is done (close() was called)
            if not texts:
                return None
            ends[-1] = final_end
            self.texts, self.ends, self.firsts = [], [], []
            skipped, self.skipped = self.skipped, 0
            return PieceBatch(texts, ends, firsts, self.batch_start, False, read_bytes, skipped)
        if len(texts) < 2:
            return None
        keep = texts.pop(), ends.pop(), firsts.pop()
        skipped, self.skipped = self.skipped, 0
        batch = PieceBatch(texts, ends, firsts, self.batch_start, not keep[2], read_bytes, skipped)
        self.batch_start = ends[-1]
        self.texts, self.ends, self.firsts = [keep[0]], [keep[1]], [keep[2]]
        return batch
