"""The row filter: which rows of a new shard train, given the documents a model trained."""

from __future__ import annotations

import numpy as np
import pytest

from allllm.data.row_filter import (
    HELD_OUT_MIN_TOKENS,
    RowFilter,
    ShardRows,
    classify,
    effective_rows,
    from_ranges,
    run_documents,
    to_ranges,
)
from allllm.data.valsplit import split_rows

DOCS = np.dtype(
    [("hi", "<u8"), ("lo", "<u8"), ("start", "<u8"), ("source", "<u4"), ("flags", "<u4")]
)
SID = "ab" * 32


def _shard(
    lengths: list[int], digests: list[int], seq: int = 10, fraction: float = 0.0
) -> ShardRows:
    docs = np.zeros(len(lengths), dtype=DOCS)
    docs["start"] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    docs["hi"] = digests
    docs["lo"] = [d * 7 + 1 for d in digests]
    n_tokens = int(sum(lengths))
    n_rows = -(-n_tokens // seq)
    return ShardRows(SID, n_rows, seq, n_tokens - (n_rows - 1) * seq, (1, fraction), docs)


def _ledger(trained: set[int], held: set[int] = frozenset()):  # type: ignore[assignment]
    def view(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.isin(hi, list(trained) or [-1]), np.isin(hi, list(held) or [-1])

    return view


def test_ranges_round_trip() -> None:
    rows = np.array([0, 1, 2, 5, 7, 8])
    assert to_ranges(rows) == [[0, 3], [5, 6], [7, 9]]
    assert from_ranges(to_ranges(rows)).tolist() == rows.tolist()
    assert to_ranges(np.zeros(0, np.int64)) == [] and from_ranges([]).size == 0


def test_rows_of_trained_documents_are_skipped_and_mixed_rows_train() -> None:
    # documents of 10 ids each in rows of 10: row r holds document r exactly
    shard = _shard([10] * 6, [1, 2, 3, 4, 5, 6])
    res = classify([shard], _ledger({1, 2, 4, 5}), dedup=True)[0]
    assert res.train_rows.tolist() == [2, 5]
    assert res.record.skipped_rows == 4 and res.record.skipped_tokens == 40
    # a row mixing a trained and a new document trains
    shard = _shard([15, 15], [1, 9])
    res = classify([shard], _ledger({1}), dedup=True)[0]
    assert res.train_rows.tolist() == [1, 2] and res.record.skipped_rows == 1


def test_held_out_documents_keep_their_rows_from_training() -> None:
    shard = _shard([20, 20, 20], [1, 2, 3])
    res = classify([shard], _ledger(set(), {2}), dedup=True)[0]
    assert res.train_rows.tolist() == [0, 1, 4, 5]
    assert res.record.held_out_rows == 2
    # too short to be held out: a common line must not hold out every row containing it
    short = _shard([HELD_OUT_MIN_TOKENS - 1, 25], [2, 3])
    assert classify([short], _ledger(set(), {2}), dedup=True)[0].record.held_out_rows == 0


def test_duplicates_in_a_run_train_once_in_shard_order() -> None:
    a = _shard([10, 10], [1, 2])
    b = _shard([10, 10, 10], [2, 3, 1])
    b.shard_id = "cd" * 32
    ra, rb = classify([a, b], _ledger(set()), dedup=True)
    assert ra.train_rows.tolist() == [0, 1]
    assert rb.train_rows.tolist() == [1] and rb.record.dedup_rows == 2
    ra, rb = classify([a, b], _ledger(set()), dedup=False)
    assert rb.train_rows.tolist() == [0, 1, 2] and rb.record.dedup_rows == 0


def test_validation_rows_with_trained_documents_are_dropped() -> None:
    shard = _shard([10] * 40, list(range(1, 41)), fraction=0.3)
    _train, val = split_rows(1, SID, 40, 0.3)
    res = classify([shard], _ledger({int(val[0]) + 1}), dedup=True)[0]
    assert res.val_rows.tolist() == val[1:].tolist()
    assert res.record.val_dropped == [[int(val[0]), int(val[0]) + 1]]
    # the stored filter gives the same rows back, whatever the ledger says later
    again = effective_rows((1, 0.3), SID, 40, RowFilter.from_dict(res.record.to_dict()))
    assert again[0].tolist() == res.train_rows.tolist()
    assert again[1].tolist() == res.val_rows.tolist()


def test_documents_wholly_in_this_runs_validation_rows_are_held_out_elsewhere() -> None:
    # 20 ids a document (long enough to be held out), one document a row
    a = _shard([20] * 40, list(range(1, 41)), seq=20, fraction=0.3)
    val = split_rows(1, SID, 40, 0.3)[1]
    copy = _shard([20, 20], [int(val[0]) + 1, 99], seq=20)
    copy.shard_id = "ff" * 32
    # the copy in the other shard may not train: validation would measure memorised text
    _ra, rb = classify([a, copy], _ledger(set()), dedup=True)
    assert rb.train_rows.tolist() == [1] and rb.record.held_out_rows == 1


def test_run_documents_trained_any_token_held_every_token() -> None:
    # rows of 10: document 0 in rows 0-1, document 1 in rows 1-4, document 2 in rows 4-6
    shard = _shard([15, 30, 20], [1, 2, 3], fraction=0.0)
    trained, held = run_documents(shard, np.array([0, 1]), np.array([2, 3, 4, 5, 6]))
    assert trained.tolist() == [0, 1] and held.tolist() == [2]
    trained, held = run_documents(shard, np.array([0]), np.array([2, 3, 4, 5, 6]))
    assert trained.tolist() == [0] and held.tolist() == [2]  # document 1 is in row 1 too


@pytest.mark.parametrize("fraction", [0.0, 0.2])
def test_no_documents_means_the_split_as_it_is(fraction: float) -> None:
    shard = _shard([10] * 20, list(range(20)), fraction=fraction)
    shard.docs = None
    res = classify([shard], _ledger(set(range(20))), dedup=True)[0]
    train, _val = split_rows(1, SID, 20, fraction)
    assert res.train_rows.tolist() == train.tolist() and res.record.empty
