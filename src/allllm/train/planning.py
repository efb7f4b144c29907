"""Planning a new run (docs/design.md: a training run): which shards, which rows, how many steps, what to replay.

Rank 0 selects the shards a new run trains (``--only-new``: valid and not
seen), counts their training rows (validation rows are held out), draws
replay rows once from seen shards that are still present, and returns a
:class:`~allllm.train.run_plan.RunPlan` that every rank then follows.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from allllm.config import Config
from allllm.data.anchor import AnchorShard
from allllm.data.anchor_pool import AnchorPool
from allllm.data.registry import ScanResult, ScanSpec, ShardEntry, TokenizerIdentity, scan_shards
from allllm.data.row_filter import NO_FILTER, RowFilter, ShardRows, classify, effective_rows
from allllm.data.sampler import RowSampler
from allllm.data.seen import SeenMap
from allllm.train.options import Reporter, TrainOptions
from allllm.train.run_plan import RunPlan, make_run_id, order_seed
from allllm.train.schedule import effective_warmup
from allllm.util.clock import utc_iso

#: a shard's documents (sidecar records) or None (shard-level accounting)
DocsOf = Callable[[ShardEntry], "np.ndarray | None"]
#: (hi, lo) digests -> (trained, held_out): the model's ledger as the row filter asks it
LedgerView = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def NO_LEDGER(hi: np.ndarray, _lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ledger of a model that has trained nothing."""
    return np.zeros(hi.size, dtype=bool), np.zeros(hi.size, dtype=bool)


def no_documents(_entry: ShardEntry) -> None:
    """Shard-level accounting for every shard (no documents known)."""
    return None


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
        elif entry.anchor_only:
            continue  # drawn as anchor replay (data.anchor), never new data
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


def split_for(entry: ShardEntry, cfg: Config) -> tuple[int, float]:
    """The split that decides ``entry``'s validation rows for this model.

    Fixed when the shard is first planned into a run and stored in its seen record: a
    seen shard keeps it whatever ``train.seed`` / ``data.val_fraction`` say now, so replay
    and re-training never read its held-out rows. Only never-trained shards take the
    current config.
    """
    if entry.record is not None:
        return entry.record.split
    return cfg.train.seed, cfg.data.val_fraction


def stored_filter(entry: ShardEntry) -> RowFilter:
    """The row filter fixed when a seen shard was first planned (none for a new shard)."""
    return RowFilter.from_dict(entry.record.row_filter) if entry.record is not None else NO_FILTER


def _training_rows(entry: ShardEntry, split: tuple[int, float]) -> np.ndarray:
    """The rows a seen shard trained (its pinned split minus its stored filter): replay draws
    only these, never rows the ledger kept out."""
    return effective_rows(split, entry.shard_id or "", entry.n_rows or 0, stored_filter(entry))[0]


def shard_rows(
    entry: ShardEntry, cfg: Config, docs: DocsOf, split: tuple[int, float] | None = None
) -> ShardRows:
    """What the row filter needs of ``entry`` (its documents from ``docs``; its split
    ``split``, by default the one it is planned with: :func:`split_for`)."""
    return ShardRows(
        shard_id=entry.shard_id or "",
        n_rows=entry.n_rows or 0,
        seq_len=entry.seq_len or cfg.data.seq_len,
        last_row_len=entry.last_row_len or 0,
        split=split or split_for(entry, cfg),
        docs=docs(entry),
    )


def filter_new_shards(
    cfg: Config, entries: list[ShardEntry], ledger: LedgerView, docs: DocsOf
) -> dict[str, RowFilter]:
    """The row filters of never-trained shards, decided together (duplicates across them)."""
    rows = [shard_rows(e, cfg, docs) for e in sorted(entries, key=lambda e: e.shard_id or "")]
    results = classify(rows, ledger, dedup=cfg.data.dedup)
    return {r.shard_id: res.record for r, res in zip(rows, results)}


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
    ledger: LedgerView | None = None,
    docs: DocsOf | None = None,
    anchor: list[AnchorShard] | None = None,
    pool: AnchorPool | None = None,
) -> RunPlan:
    """A new run over ``selected`` (plus replay rows from seen shards and anchor rows from
    ``anchor``'s usable shards, drawn from ``pool``, when configured).

    New shards go through the row filter against ``ledger`` (rows of trained documents are
    skipped, ...); seen shards trained again keep the rows their first plan fixed. A run of
    ``n_new`` rows has ``total = n_new/(1−r−a)`` rows: ``round(total·r)`` replayed,
    ``round(total·a)`` anchor rows.
    """
    train = cfg.train
    ids = sorted(e.shard_id for e in selected if e.shard_id)
    run_id = make_run_id(ids, start_step)
    by_id = {e.shard_id: e for e in selected}
    new = [by_id[sid] for sid in ids if by_id[sid].state != "seen"]
    filters = filter_new_shards(cfg, new, ledger or NO_LEDGER, docs or no_documents)
    rows, tokens, splits, row_filters = {}, {}, {}, {}
    for sid in ids:
        entry = by_id[sid]
        split = split_for(entry, cfg)
        splits[sid] = {"val_seed": split[0], "val_fraction": split[1]}
        row_filter = filters.get(sid) or stored_filter(entry)
        if not row_filter.empty:
            row_filters[sid] = row_filter.to_dict()
        train_rows = effective_rows(split, sid, entry.n_rows or 0, row_filter)[0]
        rows[sid] = int(train_rows.size)
        tokens[sid] = _row_tokens(entry, train_rows)
    n_new = sum(rows.values())
    replay = _draw_replay(cfg, scan, set(ids), n_new, run_id)
    replay_rows = sum(len(r) for r in replay.values())
    anchor_rows, pool_after = _draw_anchor(cfg, anchor or [], pool, n_new)
    n_rows = n_new + replay_rows + sum(len(r) for r in anchor_rows.values())
    replay_tokens = 0
    known = _entry_by_id(scan)
    for sid, rws in replay.items():
        replay_tokens += _row_tokens(known[sid], np.asarray(rws))
        seed, fraction = split_for(known[sid], cfg)
        splits[sid] = {"val_seed": seed, "val_fraction": fraction}
    anchor_of = {s.entry.shard_id: s.entry for s in anchor or []}
    for sid, rws in anchor_rows.items():
        replay_tokens += _row_tokens(anchor_of[sid], np.asarray(rws))
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
        splits=splits,
        warmup_steps=effective_warmup(train.warmup_steps, sampler.total_batches()),
        row_filters=row_filters,
        anchor=anchor_rows,
        anchor_pool=pool_after,
    )


def _share(cfg: Config, n_new: int, fraction: float) -> int:
    """Rows of a run's ``total = n_new/(1−r−a)`` that ``fraction`` (r or a) asks for."""
    rest = 1.0 - cfg.train.replay_fraction - cfg.train.anchor_fraction
    return math.floor(n_new * fraction / rest + 0.5)


def _draw_anchor(
    cfg: Config, anchor: list[AnchorShard], pool: AnchorPool | None, n_new: int
) -> tuple[dict[str, list[int]], dict[str, Any] | None]:
    """The run's anchor rows and the pool once they are drawn (None: nothing drawn)."""
    a = cfg.train.anchor_fraction
    shards = sorted({(s.entry.shard_id or "", s.entry.n_rows or 0) for s in anchor if s.usable})
    if a <= 0 or n_new == 0 or not shards:
        return {}, None
    pool = pool or AnchorPool.fresh(cfg.train.seed)
    rows, after = pool.draw(shards, _share(cfg, n_new, a))
    return rows, after.to_dict()


def _draw_replay(
    cfg: Config, scan: ScanResult, run_ids: set[str], n_new: int, run_id: str
) -> dict[str, list[int]]:
    """``n_new·r/(1−r−a)`` rows drawn without replacement from present seen shards' training rows."""
    r = cfg.train.replay_fraction
    if r <= 0 or n_new == 0:
        return {}
    pool_entries = [
        e
        for e in scan.shards
        if e.state == "seen"
        and e.shard_id
        and e.shard_id not in run_ids
        and not (e.eval_only or e.anchor_only)
    ]
    pool_entries.sort(key=lambda e: e.shard_id or "")
    parts = [_training_rows(e, split_for(e, cfg)) for e in pool_entries]
    total = sum(p.size for p in parts)
    want = min(total, _share(cfg, n_new, r))
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


def scan_for(
    cfg: Config, ident: TokenizerIdentity, seen: dict[str, Any], opts: TrainOptions
) -> ScanResult:
    """The registry's view of data.dir for this config and seen map."""
    return scan_shards(
        cfg.data_dir,
        ScanSpec.from_config(cfg, ident),
        SeenMap.from_dict(seen, "checkpoint"),  # the bare shards map
        trust_unverified=opts.trust_unverified,
    )


def choose_new_run(
    cfg: Config,
    scan: ScanResult,
    opts: TrainOptions,
    start_step: int,
    reporter: Reporter,
    *,
    ledger: LedgerView | None = None,
    docs: DocsOf | None = None,
    pool: AnchorPool | None = None,
) -> tuple[RunPlan | None, Selection]:
    """Select shards and plan a new run (None when no shard is left; a plan of 0 rows when
    every row of the new shards is already trained or held out: nothing to train)."""
    selection = select_shards(scan, only_new=opts.only_new, pattern=opts.shards)
    for entry, why in selection.excluded:
        reporter.warn(f"skipping {entry.name}: {why}")
    if selection.retrain:
        reporter.warn(
            f"{len(selection.retrain)} seen shard(s) will be trained again (no --only-new); "
            "use --only-new to train only new shards"
        )
    # digests are checked before any training (status --verify does the same)
    failed = scan.verify(selection.shards)
    for entry in failed:
        reporter.warn(f"skipping {entry.name}: invalid: {entry.reason}")
    shards = [e for e in selection.shards if e not in failed]
    if not shards:
        return None, selection
    anchor = usable_anchor(cfg, scan, reporter) if cfg.train.anchor_fraction > 0 else []
    plan = plan_run(
        cfg, shards, scan, start_step=start_step, started=utc_iso(), ledger=ledger, docs=docs,
        anchor=anchor, pool=pool,
    )  # fmt: skip
    return plan, selection


def usable_anchor(cfg: Config, scan: ScanResult, reporter: Reporter) -> list[AnchorShard]:
    """The anchor shards a new run may draw from (invalid ones are named and left out)."""
    from allllm.data.anchor import find_anchor

    assert scan.spec is not None, "a scan of scan_shards carries its spec"
    shards = find_anchor(scan.spec, scan)
    for s in shards:
        if not s.usable:
            reporter.warn(f"skipping anchor shard {s.meta_path}: {s.entry.state}: {s.entry.reason}")
    usable = [s for s in shards if s.usable]
    if not usable:
        reporter.warn(
            f"train.anchor_fraction is {cfg.train.anchor_fraction} but data.anchor "
            f"({cfg.data.anchor!r}) names no valid shard: this run has no anchor rows"
        )
    return usable


def nothing_to_train(plan: RunPlan) -> str:
    """Why a planned run over new shards has no row to train (the document ledger)."""
    counts = plan.filter_counts()
    parts = []
    if counts["skipped_rows"]:
        parts.append(f"{counts['skipped_rows']:,} rows already trained")
    if counts["held_out_rows"]:
        parts.append(f"{counts['held_out_rows']:,} rows hold held-out documents")
    if counts["dedup_rows"]:
        parts.append(f"{counts['dedup_rows']:,} rows repeat other rows of the run")
    if not parts:
        return "nothing to train: the selected shards have no training rows"
    return "nothing to train: " + ", ".join(parts)


def nothing_left(
    cfg: Config, scan: ScanResult, selection: Selection, plan: RunPlan | None, after_pending: bool
) -> str:
    """The message of a ``train`` that found nothing to train (and why)."""
    if plan is not None:
        return nothing_to_train(plan)
    if after_pending:
        return "nothing new to train after the pending run"
    if not scan.shards and not scan.missing:
        return f"no shards in {cfg.data_dir} — run `allllm tokenize --model {cfg.name}` first"
    if not selection.shards:
        return "nothing new to train: every valid shard is already seen"
    return "nothing to train: the selected shards have no training rows"
