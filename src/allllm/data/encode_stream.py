"""Turn a stream of text pieces into one token stream, using every core, without changing ids.

Documents arrive from the raw reader in bounded pieces. A document's text is
cut into segments of about ``segment_chars`` only where the tokenizer's
``cut_rule`` proves the cut cannot change an id (DESIGN.md §3); segments of many
documents form a batch of about ``batch_chars`` that goes to the backend's own
parallel batch API. While one batch is being encoded on a worker thread the
next one is assembled, so reading, cutting and writing overlap the encoding.

Memory stays bounded: a batch holds at most ``batch_chars`` of text, and a
document with no safe cut point is held whole only up to ``max_document_chars``;
beyond that it is cut anyway (a warning says so: the ids around that cut may
differ from encoding the document whole) — or, for a backend that can never be
cut (SentencePiece), refused with a clear error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from allllm.errors import DataError


@dataclass
class _Segment:
    text: str
    bos: bool  # put BOS before it (first segment of a document, add_bos)
    eos: bool  # put EOS after it (last segment of a document, add_eos)


@dataclass
class EncodedChunk:
    """Ids of a run of consecutive segments, in stream order, with the input they cover."""

    ids: np.ndarray  # uint32
    bytes_done: int  # raw bytes of input these ids complete
    documents: int  # documents that ended inside this chunk


@dataclass
class _Document:
    """The buffered, not yet encoded text of the current document."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    first: bool = True  # the buffer starts the document (gets BOS)
    searched: int = 0  # no safe cut before this buffer position
    forcing: bool = False  # no safe cut for max_document_chars: cut at fixed lengths


@dataclass
class _Batch:
    segments: list[_Segment] = field(default_factory=list)
    chars: int = 0
    bytes_done: int = 0
    documents: int = 0


class StreamEncoder:
    """Encodes pieces (``allllm.data.raw.TextPiece``) into uint32 id chunks, in order.

    ``encode_batch`` maps a list of texts to a list of id arrays/lists; it is the
    tokenizer's parallel batch call. ``cut_rule`` is the tokenizer's rule (or None).
    """

    def __init__(
        self,
        encode_batch: Callable[[list[str]], list],
        *,
        bos_id: int | None,
        eos_id: int | None,
        cut_rule: object | None,
        segment_chars: int = 16_384,
        batch_chars: int = 2_000_000,
        max_document_chars: int = 64 << 20,
        warn: Callable[[str], None] | None = None,
        source_name: Callable[[], str] | None = None,
    ) -> None:
        self._encode_batch = encode_batch
        self._bos = bos_id
        self._eos = eos_id
        self._cut_rule = cut_rule
        self._segment_chars = max(1, segment_chars)
        self._batch_chars = max(1, batch_chars)
        self._max_doc = max(self._segment_chars, max_document_chars)
        self._warn = warn or (lambda _msg: None)
        self._source_name = source_name or (lambda: "input")
        self._forced_cut_warned = False

    # -- public -----------------------------------------------------------------------------------
    def encode(self, pieces: Iterable[object]) -> Iterator[EncodedChunk]:
        """Yield encoded chunks in input order while the next batch is being prepared."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="allllm-encode") as pool:
            inflight: deque[tuple[Future, _Batch]] = deque()
            for batch in self._batches(pieces):
                inflight.append(
                    (pool.submit(self._encode_batch, [s.text for s in batch.segments]), batch)
                )
                if len(inflight) >= 2:
                    yield self._collect(*inflight.popleft())
            while inflight:
                yield self._collect(*inflight.popleft())

    # -- batching ---------------------------------------------------------------------------------
    def _batches(self, pieces: Iterable[object]) -> Iterator[_Batch]:
        batch = _Batch()
        doc = _Document()
        for piece in pieces:
            if piece.doc_start:  # type: ignore[attr-defined]
                doc = _Document()
            text: str = piece.text  # type: ignore[attr-defined]
            if text:
                doc.parts.append(text)
                doc.length += len(text)
            if doc.length >= 2 * self._segment_chars:
                for head in self._cut_heads(doc):
                    batch.segments.append(
                        _Segment(head, doc.first and self._bos is not None, False)
                    )
                    batch.chars += len(head)
                    doc.first = False
            batch.bytes_done += piece.end - piece.start  # type: ignore[attr-defined]
            if piece.doc_end:  # type: ignore[attr-defined]
                self._end_document(batch, doc)
                doc = _Document()
            if batch.chars >= self._batch_chars:
                yield batch
                batch = _Batch()
        if doc.parts:  # a reader always ends its documents; still, never drop text
            self._end_document(batch, doc)
        if batch.segments or batch.bytes_done:
            yield batch

    def _end_document(self, batch: _Batch, doc: _Document) -> None:
        text = "".join(doc.parts)
        batch.segments.append(
            _Segment(text, doc.first and self._bos is not None, self._eos is not None)
        )
        batch.chars += len(text)
        batch.documents += 1

    def _cut_heads(self, doc: _Document) -> list[str]:
        """Split whole segments off the buffered document at safe cuts; keep the tail buffered.

        ``doc.searched``: no safe cut exists before it (known from an earlier
        call), so text without cut points is scanned once, not again and again.
        """
        if self._cut_rule is None:
            if doc.length > self._max_doc:
                raise DataError(
                    f"{self._source_name()}: a document is longer than {self._max_doc:,} "
                    "characters and this tokenizer (SentencePiece) cannot be cut safely inside a "
                    "document",
                    'set data.document_boundary to "blank_line" or "line"',
                )
            return []
        buf = "".join(doc.parts)
        seg = self._segment_chars
        end = len(buf) - 1  # a cut needs a character after it
        heads: list[str] = []
        start, searched = 0, doc.searched
        while len(buf) - start >= 2 * seg:
            # the last safe cut within one segment length, else the first window after it with one
            target = start + seg
            cut = -1
            if target > searched:
                cut = self._cut_rule.last_cut(buf, max(start, searched), target)  # type: ignore[attr-defined]
            lo = max(target, searched)
            while cut < 0 and lo < end:
                hi = min(lo + seg, end)
                cut = self._cut_rule.last_cut(buf, lo, hi)  # type: ignore[attr-defined]
                lo = hi
            if cut < 0:
                searched = end  # nothing up to the end of the buffer: never scan it again
                if not doc.forcing and len(buf) - start <= self._max_doc:
                    break  # keep buffering: a safe point may still come
                if not doc.forcing and not self._forced_cut_warned:
                    self._forced_cut_warned = True
                    self._warn(
                        f"{self._source_name()}: more than {self._max_doc:,} characters without a "
                        "safe cut point (e.g. one huge line); cutting anyway to bound memory — ids "
                        "next to such cuts may differ from encoding the text whole"
                    )
                doc.forcing = True  # for the rest of this document, never buffer that much again
                cut = start + seg
            heads.append(buf[start:cut])
            start = cut
        rest = buf[start:]
        doc.parts, doc.length, doc.searched = (
            ([rest] if rest else []),
            len(rest),
            max(0, searched - start),
        )
        return heads

    # -- results ----------------------------------------------------------------------------------
    def _collect(self, future: Future, batch: _Batch) -> EncodedChunk:
        results = future.result()
        parts: list[np.ndarray] = []
        bos = np.array([self._bos], dtype=np.uint32) if self._bos is not None else None
        eos = np.array([self._eos], dtype=np.uint32) if self._eos is not None else None
        for seg, ids in zip(batch.segments, results):
            if seg.bos and bos is not None:
                parts.append(bos)
            parts.append(ids if isinstance(ids, np.ndarray) else np.array(ids, dtype=np.uint32))
            if seg.eos and eos is not None:
                parts.append(eos)
        ids = (
            np.concatenate(parts).astype(np.uint32, copy=False) if parts else np.empty(0, np.uint32)
        )
        return EncodedChunk(ids=ids, bytes_done=batch.bytes_done, documents=batch.documents)
