"""Turn a stream of text pieces into one token stream, using every core, without changing ids.

Documents arrive from the raw reader in bounded pieces (``Pieces``: parallel
lists, no object per piece). A document's text is cut into segments of about
``segment_chars`` only where the tokenizer's ``cut_rule`` proves the cut cannot
change an id (docs/design.md: tokens, documents, rows); segments of many documents form a batch of about
``batch_chars`` that goes to the backend's own parallel batch API on a worker
thread. While one batch is being encoded the next one is assembled and the
previous one written, so reading, cutting and writing overlap the encoding.

Pieces that are whole short documents (every line in ``line`` mode) take a fast path
that handles a whole list at once; ids come back as arrays or lists, are flattened in
bulk (``array.fromlist``) — or, where the backend proves it equal (tiktoken: texts joined
by a special token), a batch of short texts is one call — and BOS/EOS are inserted with
one vectorized scatter per batch.

Memory stays bounded: a batch holds at most ``batch_chars`` of text (plus one piece),
and a document with no safe cut point is held whole only up to ``max_document_chars``;
beyond that it is cut anyway (a warning says so: ids around that cut may differ from
encoding it whole) — or, for a backend that can never be cut (SentencePiece), refused.
"""

from __future__ import annotations

import array
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from allllm.data.tokenize.pieces import Batch, Document, EncodedChunk, EncodeTimings, Pieces
from allllm.errors import DataError
from allllm.tokenizer.base import CutRule
from allllm.util.gc_pause import gc_paused

__all__ = ["EncodeTimings", "EncodedChunk", "Pieces", "StreamEncoder"]

# an array typecode of 4-byte unsigned ints ("I" on every platform numpy supports, checked here)
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


class StreamEncoder:
    """Encodes ``Pieces`` into uint32 id chunks, in input order.

    ``encode_batch`` maps a list of texts to a list of id arrays or lists: the
    tokenizer's parallel batch call; ``encode_batch_arrays``, when the backend has
    one, makes uint32 arrays without Python ints and is used for batches of long
    texts (an array costs more than a short list: for one-line documents lists are
    ~25% cheaper, for 16K-character segments arrays are). ``encode_joined``, when
    the backend has it, encodes a whole batch of short texts in one call (flat ids
    and a count per text): for one-line documents that is ~2x faster than a call
    per line. ``cut_rule``: the tokenizer's, or None when documents may never be cut.
    """

    #: texts at least this long on average are encoded to arrays (when the backend can)
    ARRAY_MIN_CHARS = 400
    #: a full garbage collection after this many batches (~128 MB of text by default)
    GC_EVERY_BATCHES = 64

    def __init__(
        self,
        encode_batch: Callable[[list[str]], Sequence[Any]],
        *,
        encode_batch_arrays: Callable[[list[str]], Sequence[Any]] | None = None,
        encode_joined: Callable[[list[str]], tuple[np.ndarray, np.ndarray] | None] | None = None,
        bos_id: int | None,
        eos_id: int | None,
        cut_rule: CutRule | None,
        segment_chars: int = 16_384,
        batch_chars: int = 2_000_000,
        max_document_chars: int = 16 << 20,
        warn: Callable[[str], None] | None = None,
        source_name: Callable[[], str] | None = None,
        workers: int = 1,
    ) -> None:
        self._encode_batch = encode_batch
        self._encode_batch_arrays = encode_batch_arrays
        self._encode_joined = encode_joined
        self._bos = bos_id
        self._eos = eos_id
        self._cut_rule = cut_rule
        self._segment_chars = max(1, segment_chars)
        self._batch_chars = max(1, batch_chars)
        self._max_doc = max(2 * self._segment_chars, max_document_chars)
        self._cut_at = 2 * self._segment_chars if cut_rule is not None else self._max_doc + 1
        self._warn = warn or (lambda _msg: None)
        self._source_name = source_name or (lambda: "input")
        self._forced_cut_warned = False
        self.timings = EncodeTimings()
        self.workers = max(1, workers)  # batches encoded at once, each by one backend call
        self._pool: ThreadPoolExecutor | None = None
        self._source: Iterator[Batch] = iter(())
        self._inflight: deque[tuple[Future, Batch]] = deque()
        self._submitted = 0
        self.started = False  # :meth:`start` began the input ahead of :meth:`encode`

    # -- public -----------------------------------------------------------------------------------
    def encode(
        self,
        feed: Iterable[Pieces] | None = None,
        *,
        pool: ThreadPoolExecutor | None = None,
        on_fed: Callable[[], None] | None = None,
    ) -> Iterator[EncodedChunk]:
        """Yield encoded chunks in input order while the next batch is being prepared.

        ``feed``: the input, unless :meth:`start` began it already. ``pool``: encoder
        threads shared across shard jobs (else a pool of ``workers`` for this call).
        ``on_fed`` is called once the last batch is submitted, before the last results
        are collected: the caller starts the next job then (:meth:`start`), so the pool
        never idles while this job's tail is encoded and its shard finished.

        The cyclic garbage collector is paused meanwhile (``gc_pause``) and run every
        ``GC_EVERY_BATCHES`` batches instead: every short document makes a string and a
        list of ids, and the collections they trigger find nothing.
        """
        if feed is not None:
            self._source = self._batches(feed)
        with contextlib.ExitStack() as stack:
            gc_was_enabled = stack.enter_context(gc_paused())
            if self._pool is None:
                if pool is None:  # this call's own threads, gone when it ends
                    pool = ThreadPoolExecutor(self.workers, thread_name_prefix="allllm-encode")
                    stack.enter_context(pool)
                    stack.callback(setattr, self, "_pool", None)
                self._pool = pool
            limit = 2 * self.workers
            for batch in self._source:
                self._submit(batch)
                if gc_was_enabled and self._submitted % self.GC_EVERY_BATCHES == 0:
                    gc.collect()
                if len(self._inflight) >= limit:
                    yield self._collect(*self._inflight.popleft())
            if on_fed is not None:
                on_fed()
            while self._inflight:
                yield self._collect(*self._inflight.popleft())

    def start(self, feed: Iterable[Pieces], pool: ThreadPoolExecutor) -> None:
        """Begin ``feed`` ahead of :meth:`encode`: assemble its first ``2 × workers - 1``
        batches and queue them on ``pool`` behind the work already there."""
        self._pool = pool
        self._source = self._batches(feed)
        self.started = True
        with gc_paused():
            while len(self._inflight) < 2 * self.workers - 1:
                batch = next(self._source, None)
                if batch is None:
                    self._source = iter(())
                    break
                self._submit(batch)

    def cancel(self) -> None:
        """Drop what :meth:`start` queued (results never collected)."""
        for future, _batch in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._source = iter(())

    def _submit(self, batch: Batch) -> None:
        assert self._pool is not None
        self._inflight.append((self._pool.submit(self._encode, batch), batch))
        self._submitted += 1

    # -- batching (main thread) -------------------------------------------------------------------
    def _batches(self, feed: Iterable[Pieces]) -> Iterator[Batch]:
        batch = Batch()
        doc: Document | None = None  # the open document, if any
        has_bos, has_eos = self._bos is not None, self._eos is not None
        clock = time.thread_time
        items = iter(feed)
        while True:
            t0 = clock()
            pieces = next(items, None)
            t1 = clock()
            self.timings.read += t1 - t0
            if pieces is None:
                break
            texts, starts = pieces.texts, pieces.doc_starts
            n = len(texts)
            if (
                n
                and doc is None
                and not (pieces.open or pieces.continues or pieces.cut)
                and all(starts)
                and max(map(len, texts)) < self._cut_at
            ):  # whole short documents only: take the list as it is
                batch.texts += texts
                batch.bos += [has_bos] * n
                batch.eos += [has_eos] * n
                batch.ends += [True] * n
                batch.doc_sources += [pieces.source] * n
                batch.chars += sum(map(len, texts))
            else:
                for i, text in enumerate(texts):
                    if starts[i] or doc is None:
                        if doc is not None:  # a reader always ends its documents; still, keep text
                            self._end_document(batch, doc)
                        doc = Document(
                            source=pieces.source, first=not (i == 0 and pieces.continues)
                        )
                    if text:
                        doc.parts.append(text)
                        doc.length += len(text)
                    if doc.length >= self._cut_at:
                        self._emit_heads(batch, doc)
                    if starts[i + 1] if i + 1 < n else not pieces.open:
                        self._end_document(batch, doc, eos=not pieces.cut or i + 1 < n)
                        doc = None
                if pieces.cut and doc is not None:  # (no text: the document was open before)
                    self._end_document(batch, doc, eos=False)
                    doc = None
            batch.add_progress(pieces.source, pieces.nbytes)
            self.timings.cut += clock() - t1
            if batch.chars >= self._batch_chars:
                yield batch
                batch = Batch()
        if doc is not None:
            self._end_document(batch, doc)
        if batch.texts or batch.progress:
            yield batch

    def _emit_heads(self, batch: Batch, doc: Document) -> None:
        for head in self._cut_heads(doc):
            batch.texts.append(head)
            batch.bos.append(doc.first and self._bos is not None)
            batch.eos.append(False)
            batch.ends.append(False)
            batch.chars += len(head)
            doc.first = False

    def _end_document(self, batch: Batch, doc: Document, eos: bool = True) -> None:
        text = "".join(doc.parts)
        batch.texts.append(text)
        batch.bos.append(doc.first and self._bos is not None)
        batch.eos.append(eos and self._eos is not None)
        batch.ends.append(True)
        batch.doc_sources.append(doc.source)
        batch.chars += len(text)

    def _cut_heads(self, doc: Document) -> list[str]:
        """Split whole segments off the buffered document at safe cuts; keep the tail buffered.

        A head ends at the last safe cut within one segment length, or else at the last
        one in the first segment-long window after that which has one; the tail keeps at
        least one character, so the text still to come can decide whether a cut is safe.
        ``doc.searched``: no safe cut exists before it (known from an earlier call), so
        text without cut points is scanned once, not again and again.
        """
        rule = self._cut_rule
        if rule is None:
            raise DataError(
                f"{self._source_name()}: a document is longer than {self._max_doc:,} "
                "characters and this tokenizer (SentencePiece) cannot cut a document safely",
                'set data.document_boundary to "blank_line" or "line", or split the text',
            )
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
                cut = rule.last_cut(buf, max(start, searched), target)
            lo = max(target, searched)
            while cut < 0 and lo < end:
                hi = min(lo + seg, end)
                cut = rule.last_cut(buf, lo, hi)
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
        doc.parts, doc.length = ([rest] if rest else []), len(rest)
        doc.searched = max(0, searched - start)
        return heads

    # -- encoding (worker thread) -----------------------------------------------------------------
    def _encode(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(the batch's ids with BOS/EOS, the offsets in them where its documents end)."""
        t0 = time.perf_counter()
        long_texts = batch.chars >= self.ARRAY_MIN_CHARS * len(batch.texts)
        joined = None
        if self._encode_joined is not None and not (
            long_texts and self._encode_batch_arrays is not None
        ):  # short texts: one call for the batch saves a call (and a list) per text
            joined = self._encode_joined(batch.texts)
        if joined is not None:
            self.timings.encode += time.perf_counter() - t0
            t1 = time.thread_time()
            flat, lens = joined
        else:
            encode = self._encode_batch
            if self._encode_batch_arrays is not None and long_texts:
                encode = self._encode_batch_arrays
            results = encode(batch.texts)
            self.timings.encode += time.perf_counter() - t0
            t1 = time.thread_time()
            flat, lens = self._flatten(batch, results)
        ids, doc_ends = self._add_specials(batch, flat.astype(np.uint32, copy=False), lens)
        self.timings.convert += time.thread_time() - t1
        return ids, doc_ends

    @staticmethod
    def _flatten(batch: Batch, results: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Each text's ids (arrays or lists) as one uint32 array, and the count per text."""
        if len(results) != len(batch.texts):
            raise RuntimeError(
                f"the tokenizer returned {len(results)} results for {len(batch.texts)} texts"
            )
        lens = np.fromiter(map(len, results), dtype=np.int64, count=len(results))
        if results and isinstance(results[0], np.ndarray):
            return np.concatenate(results), lens
        buf = array.array(_U32)
        for ids in results:
            buf.fromlist(ids)
        return np.frombuffer(buf, dtype=np.uint32), lens

    def _add_specials(
        self, batch: Batch, flat: np.ndarray, lens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``flat`` with BOS before and EOS after each text where the batch asks for them, and
        the offsets in the result where the batch's documents end (after their EOS)."""
        if lens.size != len(batch.texts) or int(lens.sum()) != flat.size:
            raise RuntimeError(
                f"the tokenizer returned {lens.size} texts / {flat.size} ids for "
                f"{len(batch.texts)} texts / {int(lens.sum())} ids"
            )
        n = len(batch.texts)
        bos = np.fromiter(batch.bos, dtype=bool, count=n)
        eos = np.fromiter(batch.eos, dtype=bool, count=n)
        doc_end = np.fromiter(batch.ends, dtype=bool, count=n)
        if not (bos.any() or eos.any()):
            return flat, np.cumsum(lens, dtype=np.int64)[doc_end]
        sizes = lens + bos + eos
        ends = np.cumsum(sizes, dtype=np.int64)
        out = np.empty(int(ends[-1]), dtype=np.uint32)
        is_id = np.ones(out.size, dtype=bool)
        bos_at = (ends - sizes)[bos]
        eos_at = ends[eos] - 1
        is_id[bos_at] = False
        is_id[eos_at] = False
        out[is_id] = flat
        if bos_at.size:
            out[bos_at] = self._bos
        if eos_at.size:
            out[eos_at] = self._eos
        return out, ends[doc_end]

    # -- results (main thread) --------------------------------------------------------------------
    def _collect(self, future: Future, batch: Batch) -> EncodedChunk:
        t0 = time.perf_counter()
        ids, doc_ends = future.result()
        self.timings.wait += time.perf_counter() - t0
        n_docs = len(batch.doc_sources)  # == doc_ends.size: one per text that ends a document
        return EncodedChunk(ids, batch.progress, n_docs, doc_ends, batch.doc_sources)
