"""One step-wise run as it is stored: its shards, rows, order, length and progress.

A run is planned once, on rank 0 (:mod:`allllm.train.planning`), and stored in
every checkpoint it writes as part of the :class:`~allllm.train.state.TrainState`,
so a resumed run trains exactly the remaining rows of the same plan — whatever
appeared in ``data/`` meanwhile, and on any number of ranks. ``run_id`` is a
hash of the sorted shard ids and the start step; it seeds the row order. This
module is plain data (no numpy, no torch): ``status`` reads plans too.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from allllm.errors import DataError


@dataclass
class RunPlan:
    """One run, as stored in ``trainer_state.json`` (plain JSON data)."""

    run_id: str
    shard_ids: list[str]  # sorted
    shard_files: dict[str, dict[str, str]]  # shard_id -> role -> file name (when planned)
    shard_rows: dict[str, int]  # training rows per shard (what seen records count)
    shard_tokens: dict[str, int]  # training tokens per shard
    replay: dict[str, list[int]]  # seen shard_id -> its replayed rows
    epochs: int
    batch_size: int
    order_seed: int
    val_seed: int
    val_fraction: float
    start_step: int
    n_rows: int  # rows a pass (training + replay)
    total_steps: int
    total_tokens: int  # over all epochs
    started: str
    sampler: dict[str, Any] = field(default_factory=dict)
    steps_done: int = 0
    tokens_done: int = 0
    complete: bool = False
    skipped_steps: int = 0  # steps whose loss or gradients were not finite (no update)
    skipped_in_row: int = 0  # the current streak of them (train.max_skipped_steps)
    # shard_id -> {"val_seed", "val_fraction"}: the split each shard (run and replay) is read
    # with; a shard absent here (plans written before it existed) uses val_seed / val_fraction
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # warm-up steps fixed when planned (None: a plan of allllm 0.1.0, see schedule.legacy_warmup)
    warmup_steps: int | None = None
    # shard_id -> its row filter (data/row_filter.py RowFilter.to_dict()): rows the document
    # ledger kept from training or validation when planned; absent: the split as it is
    row_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    # anchor shard_id -> its drawn rows (data.anchor; repeated each epoch like replay rows)
    anchor: dict[str, list[int]] = field(default_factory=dict)
    # the anchor pool once this run's rows are drawn (data/anchor_pool.py); None: not drawn
    anchor_pool: dict[str, Any] | None = None

    @property
    def replay_rows(self) -> int:
        return sum(len(r) for r in self.replay.values())

    @property
    def anchor_rows(self) -> int:
        return sum(len(r) for r in self.anchor.values())

    def extra_shards(self) -> list[str]:
        """Shards the run reads besides its own: replay shards, then anchor shards."""
        out = [s for s in self.replay if s not in self.shard_ids]
        return out + [s for s in self.anchor if s not in self.shard_ids and s not in out]

    def counted(self, key: str) -> int:
        """A row-filter count summed over the run's shards (skipped_rows, dedup_rows, ...)."""
        return sum(int(f.get(key, 0)) for f in self.row_filters.values())

    def filter_counts(self) -> dict[str, int]:
        """``skipped_rows``, ``skipped_tokens``, ``held_out_rows``, ``dedup_rows`` of the run."""
        return {k: self.counted(k) for k in FILTER_COUNTS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        try:
            return cls(**data)
        except TypeError as exc:
            raise DataError(f"checkpoint run plan is malformed ({exc})") from None

    @property
    def short_id(self) -> str:
        return self.run_id[:12]

    def split_of(self, shard_id: str) -> tuple[int, float]:
        """(val_seed, val_fraction) that decide ``shard_id``'s validation rows in this run."""
        pinned = self.splits.get(shard_id)
        if pinned is None:
            return self.val_seed, self.val_fraction
        return int(pinned["val_seed"]), float(pinned["val_fraction"])


#: what the row filters count, as reported in runs.jsonl, train --json and the dry run
FILTER_COUNTS = ("skipped_rows", "skipped_tokens", "held_out_rows", "dedup_rows")


def make_run_id(shard_ids: list[str], start_step: int) -> str:
    """Hash of the sorted shard ids and the start step (docs/design.md: a training run)."""
    h = hashlib.sha256()
    for sid in sorted(shard_ids):
        h.update(sid.encode())
        h.update(b"\n")
    h.update(f"start={start_step}".encode())
    return h.hexdigest()


def order_seed(run_id: str, seed: int) -> int:
    """The row-order seed of a run (from its id and ``train.seed``)."""
    digest = hashlib.sha256(f"{seed}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
