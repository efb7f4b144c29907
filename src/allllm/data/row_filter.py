"""Which rows of a new shard a model trains, given the documents it already trained (docs/design.md: the ledger).

A shard's rows are split once into training and validation rows
(:mod:`allllm.data.valsplit`). Edit-aware training then looks at the
*documents* in each row (the shard's sidecar, :mod:`allllm.data.documents`)
and at the model's ledger (:mod:`allllm.data.ledger`):

- a training row made only of documents the model has trained is **skipped**
  (an edited file re-made a packed shard: only rows with new text train);
- a training row holding a document the model **holds out** (a document that
  lies wholly in validation rows) is neither trained nor validated on
  (**held out**), so validation never measures memorised text;
- with ``data.dedup``, a training row made only of documents trained already
  or copies of documents that an earlier row of the same run holds (in
  (shard_id, row) order) is **dedup**'d: exact duplicates train once;
- a validation row holding a document the model has trained is not used for
  validation (its loss would measure memory, not generalisation).

Everything is vectorized over documents and rows: a row's documents are a
contiguous index range, so "all documents of the row are X" is a difference
of prefix sums. The result of a shard is fixed when it is first planned and
stored compactly (row ranges relative to the pinned split) in the run plan
and the seen record; later growth of the ledger never changes it.

Documents shorter than :data:`HELD_OUT_MIN_TOKENS` ids are never held out:
short common lines ("Exit.", an empty line) occur everywhere, and holding
out every row containing one would hold out most of a line-mode corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from allllm.data.valsplit import split_rows

#: documents with fewer ids are never held out (see the module doc)
HELD_OUT_MIN_TOKENS = 16

#: (hi, lo) digests -> (trained, held_out) boolean arrays aligned with them
Lookup = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

Ranges = list[list[int]]


def to_ranges(rows: np.ndarray) -> Ranges:
    """Sorted row numbers as ``[start, stop)`` ranges (compact when rows come in runs)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    return [[int(rows[a]), int(rows[b - 1]) + 1] for a, b in zip(starts, stops)]


def from_ranges(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    """The row numbers of ``[start, stop)`` ranges, sorted int64."""
    if not ranges:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(int(a), int(b), dtype=np.int64) for a, b in ranges])


@dataclass(frozen=True)
class RowFilter:
    """The stored outcome for one shard: rows of its split that do not serve, and why.

    ``not_trained``: training rows of the split that do not train (skipped, held out, dedup);
    ``val_dropped``: validation rows of the split not used for validation. As ranges.
    """

    not_trained: Ranges
    val_dropped: Ranges
    skipped_rows: int = 0
    skipped_tokens: int = 0
    held_out_rows: int = 0
    dedup_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RowFilter:
        if not data:
            return NO_FILTER
        return cls(
            not_trained=[list(map(int, r)) for r in data.get("not_trained", [])],
            val_dropped=[list(map(int, r)) for r in data.get("val_dropped", [])],
            skipped_rows=int(data.get("skipped_rows", 0)),
            skipped_tokens=int(data.get("skipped_tokens", 0)),
            held_out_rows=int(data.get("held_out_rows", 0)),
            dedup_rows=int(data.get("dedup_rows", 0)),
        )

    @property
    def empty(self) -> bool:
        return not self.not_trained and not self.val_dropped


NO_FILTER = RowFilter([], [])


def effective_rows(
    split: tuple[int, float], shard_id: str, n_rows: int, rows_filter: RowFilter | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows that train, rows that validate) of a shard: its split minus its stored filter."""
    train, val = split_rows(split[0], shard_id, n_rows, split[1])
    if rows_filter is None or rows_filter.empty:
        return train, val
    if rows_filter.not_trained:
        train = np.setdiff1d(train, from_ranges(rows_filter.not_trained), assume_unique=True)
    if rows_filter.val_dropped:
        val = np.setdiff1d(val, from_ranges(rows_filter.val_dropped), assume_unique=True)
    return train, val


@dataclass
class ShardRows:
    """What the filter needs of one shard: its shape, its pinned split, its documents."""

    shard_id: str
    n_rows: int
    seq_len: int
    last_row_len: int
    split: tuple[int, float]
    docs: np.ndarray | None  # sidecar records (hi, lo, start, ...); None: shard-level accounting

    @property
    def n_tokens(self) -> int:
        return (self.n_rows - 1) * self.seq_len + self.last_row_len if self.n_rows else 0

    def row_tokens(self, rows: np.ndarray) -> int:
        """Tokens stored in ``rows`` (only the final row may be short)."""
        tokens = int(rows.size) * self.seq_len
        if self.n_rows and rows.size and (rows == self.n_rows - 1).any():
            tokens -= self.seq_len - self.last_row_len
        return tokens


@dataclass
class DocLayout:
    """Where each document of a shard lies in its rows (non-empty documents only)."""

    index: np.ndarray  # positions of the kept documents in the sidecar
    first_row: np.ndarray  # first row holding a token of the document
    last_row: np.ndarray  # last row holding a token of it
    length: np.ndarray  # ids in the document
    row_first_doc: np.ndarray  # per row: the first document (kept index) in it
    row_last_doc: np.ndarray  # per row: the last document in it

    @classmethod
    def of(cls, shard: ShardRows) -> DocLayout:
        docs = shard.docs
        assert docs is not None
        starts = docs["start"].astype(np.int64)
        ends = np.append(starts[1:], shard.n_tokens)
        length = ends - starts
        keep = np.flatnonzero(length > 0)
        starts, ends, length = starts[keep], ends[keep], length[keep]
        seq = shard.seq_len
        row_start = np.arange(shard.n_rows, dtype=np.int64) * seq
        row_end = np.minimum(row_start + seq, shard.n_tokens)
        return cls(
            index=keep,
            first_row=starts // seq,
            last_row=(ends - 1) // seq,
            length=length,
            row_first_doc=np.searchsorted(starts, row_start, side="right") - 1,
            row_last_doc=np.searchsorted(starts, row_end - 1, side="right") - 1,
        )

    def rows_all(self, flags: np.ndarray) -> np.ndarray:
        """Per row: every document in it has ``flags`` (a bool per kept document)."""
        bad = np.concatenate([[0], np.cumsum(~flags, dtype=np.int64)])
        return bad[self.row_last_doc + 1] - bad[self.row_first_doc] == 0

    def rows_any(self, flags: np.ndarray) -> np.ndarray:
        """Per row: some document in it has ``flags``."""
        good = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
        return good[self.row_last_doc + 1] - good[self.row_first_doc] > 0

    def docs_in_rows(self, row_mask: np.ndarray) -> np.ndarray:
        """Per kept document: some token of it lies in a row of ``row_mask``."""
        hits = np.concatenate([[0], np.cumsum(row_mask, dtype=np.int64)])
        return hits[self.last_row + 1] - hits[self.first_row] > 0

    def docs_within_rows(self, row_mask: np.ndarray) -> np.ndarray:
        """Per kept document: every token of it lies in rows of ``row_mask``."""
        misses = np.concatenate([[0], np.cumsum(~row_mask, dtype=np.int64)])
        return misses[self.last_row + 1] - misses[self.first_row] == 0


@dataclass
class FilterResult:
    """One shard's rows for a run, and the stored form of the decision."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    record: RowFilter


def _row_mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def classify(shards: Sequence[ShardRows], lookup: Lookup, *, dedup: bool) -> list[FilterResult]:
    """Decide the training and validation rows of the new shards of one run (in the given order,
    which must be (shard_id) order: the first copy of a duplicate in that order trains)."""
    layouts = [DocLayout.of(s) if s.docs is not None else None for s in shards]
    parts = [(s, lay) for s, lay in zip(shards, layouts) if lay is not None]
    hi = np.concatenate([s.docs["hi"][lay.index] for s, lay in parts] or [np.zeros(0, np.uint64)])
    lo = np.concatenate([s.docs["lo"][lay.index] for s, lay in parts] or [np.zeros(0, np.uint64)])
    trained_all, held_all = lookup(hi, lo) if hi.size else (np.zeros(0, bool), np.zeros(0, bool))
    held_all = held_all & ~trained_all
    bounds = np.cumsum([0] + [lay.index.size for _s, lay in parts])
    # the split, and validation rows that hold a trained document are not used
    masks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, shard in enumerate(shards):
        _train, val = split_rows(shard.split[0], shard.shard_id, shard.n_rows, shard.split[1])
        is_val = _row_mask(shard.n_rows, val)
        masks[i] = (is_val, is_val.copy())
    j = 0
    run_held = np.zeros(hi.size, dtype=bool)  # documents wholly inside this run's validation rows
    for i, lay in enumerate(layouts):
        if lay is None:
            continue
        a, b = bounds[j], bounds[j + 1]
        j += 1
        is_val, val_eff = masks[i]
        val_eff &= ~lay.rows_any(trained_all[a:b])
        run_held[a:b] = lay.docs_within_rows(val_eff) & (lay.length >= HELD_OUT_MIN_TOKENS)
    held_all |= _same_digest_any(hi, lo, run_held) & ~trained_all
    later_copy = _later_copies(hi, lo) if dedup else np.zeros(hi.size, dtype=bool)
    out: list[FilterResult] = []
    j = 0
    for i, (shard, lay) in enumerate(zip(shards, layouts)):
        is_val, val_eff = masks[i]
        train_mask = ~is_val
        skipped = held = dup = np.zeros(shard.n_rows, dtype=bool)
        if lay is not None:
            a, b = bounds[j], bounds[j + 1]
            j += 1
            trained = trained_all[a:b]
            long_enough = lay.length >= HELD_OUT_MIN_TOKENS
            held = train_mask & lay.rows_any(held_all[a:b] & long_enough)
            skipped = train_mask & ~held & lay.rows_all(trained)
            dup = train_mask & ~held & ~skipped & lay.rows_all(trained | later_copy[a:b])
            train_mask = train_mask & ~(held | skipped | dup)
        train_rows = np.flatnonzero(train_mask)
        val_rows = np.flatnonzero(val_eff)
        record = RowFilter(
            not_trained=_bridged_ranges(skipped | held | dup, is_val),
            val_dropped=to_ranges(np.flatnonzero(is_val & ~val_eff)),
            skipped_rows=int(skipped.sum()),
            skipped_tokens=shard.row_tokens(np.flatnonzero(skipped)),
            held_out_rows=int(held.sum()),
            dedup_rows=int(dup.sum()),
        )
        out.append(FilterResult(train_rows, val_rows, record))
    return out


def _bridged_ranges(mask: np.ndarray, bridge: np.ndarray) -> Ranges:
    """Ranges of ``mask`` rows, joined across ``bridge`` rows (validation rows, which are no
    training rows anyway): a skipped stretch stays one range however many validation rows
    the split scattered into it. Ranges holding no ``mask`` row are dropped."""
    if not mask.any():
        return []
    hits = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return [[a, b] for a, b in to_ranges(np.flatnonzero(mask | bridge)) if hits[b] > hits[a]]


def _digest_groups(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting the digests, group id of each sorted position): equal digests, one group."""
    order = np.lexsort((lo, hi))
    shi, slo = hi[order], lo[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])
    return order, np.cumsum(new) - 1


def _same_digest_any(hi: np.ndarray, lo: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Per document: some document with the same digest has ``flags``."""
    if hi.size == 0:
        return np.zeros(0, dtype=bool)
    order, group = _digest_groups(hi, lo)
    any_flag = np.zeros(int(group[-1]) + 1, dtype=bool)
    np.logical_or.at(any_flag, group, flags[order])
    out = np.empty(hi.size, dtype=bool)
    out[order] = any_flag[group]
    return out


def _later_copies(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Per document (in run order): an earlier document of the run has the same digest."""
    if hi.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((np.arange(hi.size), lo, hi))  # stable: run order inside a digest
    shi, slo = hi[order], lo[order]
    same_as_prev = np.zeros(order.size, dtype=bool)
    same_as_prev[1:] = (shi[1:] == shi[:-1]) & (slo[1:] == slo[:-1])
    out = np.empty(hi.size, dtype=bool)
    out[order] = same_as_prev
    return out


def run_documents(
    shard: ShardRows, train_rows: np.ndarray, val_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(trained, held out) sidecar positions of a shard once its rows served a run.

    Trained: any token in a row that trained. Held out: every token in rows that validate
    (and not trained), at least :data:`HELD_OUT_MIN_TOKENS` ids long.
    """
    if shard.docs is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lay = DocLayout.of(shard)
    trained = lay.docs_in_rows(_row_mask(shard.n_rows, train_rows))
    held = (
        lay.docs_within_rows(_row_mask(shard.n_rows, val_rows))
        & ~trained
        & (lay.length >= HELD_OUT_MIN_TOKENS)
    )
    return lay.index[trained], lay.index[held]
