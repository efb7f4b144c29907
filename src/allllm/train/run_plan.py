"""What a step-wise run trains on (DESIGN.md §8): the shards, their rows, the order, the length.

A run is planned once, on rank 0, and stored in every checkpoint it writes, so
a resumed run trains exactly the remaining rows of the same plan — whatever
appeared in ``data/`` meanwhile, and on any number of ranks. ``run_id`` is a
hash of the sorted shard ids and the start step; it seeds the row order.
Replay rows (``replay_fraction``) are drawn once from the training rows of
seen shards that are still present and stored in the plan.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from allllm.config import Config
from allllm.data.dataset import ShardDataset, ShardSource
from allllm.data.registry import ScanResult, ShardEntry
from allllm.data.sampler import RowSampler
from allllm.data.valsplit import split_rows
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


def make_run_id(shard_ids: list[str], start_step: int) -> str:
    """Hash of the sorted shard ids and the start step (DESIGN.md §8)."""
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


@dataclass
class Selection:
    """Shards chosen for a new run, and the ones left out with their reasons."""

    shards: list[ShardEntry]
    excluded: list[tuple[ShardEntry, str]]
    retrain: list[ShardEntry]  # seen shards trained again (no --only-new)


def select_shards(scan: ScanResult, *, only_new: bool, pattern: str | None = None) -> Selection:
    """Valid shards not seen (``only_new``) or all valid ones; ``pattern`` globs shard names."""
    chosen, excluded = [], []
    for entry in scan.all_entries():
        if pattern and not (
            fnmatch.fnmatch(entry.name, pattern)
            or any(fnmatch.fnmatch(f, pattern) for f in entry.files.values())
        ):
            continue
        if entry.eval_only:
            excluded.append((entry, "eval only (data.eval_shards)"))
        elif entry.state == "new" or (entry.state == "seen" and not only_new):
            chosen.append(entry)
        elif entry.state == "seen":
            continue  # the normal case of --only-new; not worth a line
        else:
            excluded.append((entry, entry.state + (f": {entry.reason}" if entry.reason else "")))
    retrain = [e for e in chosen if e.state == "seen"]
    return Selection(sorted(chosen, key=lambda e: e.shard_id or ""), excluded, retrain)


def _entry_by_id(scan: ScanResult) -> dict[str, ShardEntry]:
    """shard_id -> the readable entry carrying it (the primary of duplicates)."""
    found: dict[str, ShardEntry] = {}
    for entry in scan.shards:
        if entry.shard_id and entry.state in ("new", "seen", "superseded"):
            found.setdefault(entry.shard_id, entry)
    return found


def _training_rows(entry: ShardEntry, seed: int, val_fraction: float) -> np.ndarray:
    return split_rows(seed, entry.shard_id or "", entry.n_rows or 0, val_fraction)[0]


def _row_tokens(entry: ShardEntry, rows: np.ndarray) -> int:
    n_rows, seq_len = entry.n_rows or 0, entry.seq_len or 0
    tokens = rows.size * seq_len
    if n_rows and (rows == n_rows - 1).any():
        tokens -= seq_len - (entry.last_row_len or seq_len)
    return int(tokens)


def plan_run(
    cfg: Config,
    selected: list[ShardEntry],
    scan: ScanResult,
    *,
    start_step: int,
    started: str,
) -> RunPlan:
    """A new run over ``selected`` (plus replay rows from seen shards when configured)."""
    train = cfg.train
    ids = sorted(e.shard_id for e in selected if e.shard_id)
    run_id = make_run_id(ids, start_step)
    by_id = {e.shard_id: e for e in selected}
    rows, tokens = {}, {}
    for sid in ids:
        entry = by_id[sid]
        train_rows = _training_rows(entry, train.seed, cfg.data.val_fraction)
        rows[sid] = int(train_rows.size)
        tokens[sid] = _row_tokens(entry, train_rows)
    n_new = sum(rows.values())
    replay = _draw_replay(cfg, scan, set(ids), n_new, run_id)
    replay_rows = sum(len(r) for r in replay.values())
    n_rows = n_new + replay_rows
    replay_tokens = 0
    known = _entry_by_id(scan)
    for sid, rws in replay.items():
        replay_tokens += _row_tokens(known[sid], np.asarray(rws))
    sampler = RowSampler(
        n_rows, train.batch_size, seed=order_seed(run_id, train.seed), epochs=train.epochs
    )
    return RunPlan(
        run_id=run_id,
        shard_ids=ids,
        shard_files={sid: dict(by_id[sid].data_files) for sid in ids},
        shard_rows=rows,
        shard_tokens=tokens,
        replay=replay,
        epochs=train.epochs,
        batch_size=train.batch_size,
        order_seed=order_seed(run_id, train.seed),
        val_seed=train.seed,
        val_fraction=cfg.data.val_fraction,
        start_step=start_step,
        n_rows=n_rows,
        total_steps=sampler.total_batches(),
        total_tokens=(sum(tokens.values()) + replay_tokens) * train.epochs,
        started=started,
        sampler=sampler.state_dict(),
    )


def _draw_replay(
    cfg: Config, scan: ScanResult, run_ids: set[str], n_new: int, run_id: str
) -> dict[str, list[int]]:
    """``n_new·r/(1−r)`` rows drawn without replacement from present seen shards' training rows."""
    r = cfg.train.replay_fraction
    if r <= 0 or n_new == 0:
        return {}
    pool_entries = [
        e
        for e in scan.shards
        if e.state == "seen" and e.shard_id and e.shard_id not in run_ids and not e.eval_only
    ]
    pool_entries.sort(key=lambda e: e.shard_id or "")
    parts = [_training_rows(e, cfg.train.seed, cfg.data.val_fraction) for e in pool_entries]
    total = sum(p.size for p in parts)
    want = min(total, math.floor(n_new * r / (1.0 - r) + 0.5))
    if want == 0:
        return {}
    rng = np.random.Generator(np.random.PCG64(order_seed(run_id, cfg.train.seed + 1)))
    picks = np.sort(rng.choice(total, size=want, replace=False))
    out: dict[str, list[int]] = {}
    offset = 0
    for entry, part in zip(pool_entries, parts):
        mine = picks[(picks >= offset) & (picks < offset + part.size)] - offset
        if mine.size:
            out[entry.shard_id or ""] = part[mine].astype(np.int64).tolist()
        offset += part.size
    return out


@dataclass
class RunData:
    """The dataset a run reads and the dataset row of each position in its order."""

    dataset: ShardDataset
    rows: np.ndarray  # position in the run order -> global dataset row
    val_rows: np.ndarray  # validation rows of the run's shards (global dataset rows)
    sources: dict[str, ShardSource]


def open_run_data(plan: RunPlan, sources: dict[str, ShardSource], vocab_limit: int) -> RunData:
    """The run's dataset over ``sources`` (shard_id -> how to read it; the run's and replay shards)."""
    needed = list(plan.shard_ids) + [s for s in plan.replay if s not in plan.shard_ids]
    dataset = ShardDataset([sources[s] for s in needed], vocab_limit=vocab_limit)
    offset_of = {sid: int(dataset.offsets[i]) for i, sid in enumerate(needed)}
    parts, val_parts = [], []
    for sid in plan.shard_ids:
        train_rows, val_rows = split_rows(
            plan.val_seed, sid, sources[sid].n_rows, plan.val_fraction
        )
        if train_rows.size != plan.shard_rows[sid]:
            raise DataError(
                f"shard {sid[:12]} now has {train_rows.size} training rows, the run planned "
                f"{plan.shard_rows[sid]}",
                "the shard changed under the run; use --abandon-pending",
            )
        parts.append(train_rows.astype(np.int64) + offset_of[sid])
        val_parts.append(val_rows.astype(np.int64) + offset_of[sid])
    for sid, rws in plan.replay.items():
        parts.append(np.asarray(rws, dtype=np.int64) + offset_of[sid])
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if rows.size != plan.n_rows:
        raise DataError(f"run {plan.short_id}: {rows.size} rows found, {plan.n_rows} planned")
    val = np.concatenate(val_parts) if val_parts else np.zeros(0, np.int64)
    return RunData(dataset, rows, val, dict(sources))
