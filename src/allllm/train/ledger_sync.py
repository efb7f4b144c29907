"""Keeping a model's document ledger consistent with its checkpoints (docs/design.md: the ledger).

The ledger (:mod:`allllm.data.ledger`) is a set of immutable segment files in
``checkpoints/<name>/ledger/``; each checkpoint's trainer state lists the
segments that make *its* ledger. So the checkpoint decides, exactly as it does
for the seen map:

- a run's segment is written when the run completes, *before* the checkpoint
  that completes it, which then lists it; a kill between the two leaves an
  unlisted segment, removed at the next start (the run is still pending and
  writes the same, content-addressed segment again);
- rotation, ``--abandon-pending`` and ``--from-checkpoint`` pick another
  checkpoint and with it another list: the ledger rolls back with the weights;
- a segment any kept checkpoint lists is never deleted; one that is listed
  but missing or damaged is rebuilt from the seen shards' documents (every
  seen record stores the rows it trained), else training stops with one line;
- a trainer state written before the ledger existed (format 2) gets its ledger
  built the same way, once.

Plain numpy and files: ``status`` uses the same view of the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from allllm.config import Config
from allllm.data.anchor import find_anchor
from allllm.data.documents import shard_documents
from allllm.data.ledger import (
    KIND_HELD_OUT,
    KIND_TRAINED,
    LEDGER_DIR,
    Ledger,
    SegmentRef,
    check_segments,
    clean_unlisted,
    merge_segments,
    plan_merge,
    write_segment,
)
from allllm.data.registry import ScanResult, ShardEntry
from allllm.data.row_filter import RowFilter, ShardRows, effective_rows, run_documents
from allllm.errors import CheckpointError
from allllm.train.checkpoint import STATE_FILE, list_checkpoints
from allllm.train.planning import NO_LEDGER, DocsOf, LedgerView, shard_rows, stored_filter
from allllm.train.run_plan import RunPlan

Warn = Callable[[str], None]


def ledger_dir(cfg: Config) -> Path:
    return cfg.checkpoint_path / LEDGER_DIR


def segment_refs(refs: Iterable[dict[str, Any]], where: str = "trainer state") -> list[SegmentRef]:
    return [SegmentRef.from_dict(r, where) for r in refs]


def open_ledger(cfg: Config, refs: list[dict[str, Any]] | None) -> Ledger | None:
    """The model's ledger as a checkpoint lists it (None when it lists nothing)."""
    if not refs:
        return None
    return Ledger(ledger_dir(cfg), segment_refs(refs))


def ledger_view(ledger: Ledger | None) -> LedgerView:
    """The ledger as the row filter asks it: (trained, held out) per digest."""
    if ledger is None:
        return NO_LEDGER

    def view(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = ledger.lookup(hi, lo)
        return found.trained, found.held_out

    return view


def documents_of(data_dir: Path) -> DocsOf:
    """A shard's documents (its sidecar, or split from its token stream; None: shard-level)."""

    def docs(entry: ShardEntry) -> np.ndarray | None:
        if entry.meta is None or not entry.valid:
            return None
        return shard_documents(entry, data_dir)

    return docs


def _digests(
    shard: ShardRows, train_rows: np.ndarray, val_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, kind) of the documents a shard's rows trained and held out."""
    trained, held = run_documents(shard, train_rows, val_rows)
    docs = shard.docs
    if docs is None:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint32)
    picks = np.concatenate([trained, held])
    kind = np.concatenate(
        [
            np.full(trained.size, KIND_TRAINED, np.uint32),
            np.full(held.size, KIND_HELD_OUT, np.uint32),
        ]
    )
    return docs["hi"][picks], docs["lo"][picks], kind


def _write(
    cfg: Config, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
) -> SegmentRef | None:
    """One segment of ``parts`` (hi, lo, kind, step); None when they hold no document."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return None
    hi, lo, kind, step = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return write_segment(ledger_dir(cfg), hi, lo, kind, step)


def run_segment(cfg: Config, plan: RunPlan, scan: ScanResult, step: int) -> SegmentRef | None:
    """The segment of a completed run: the documents its shards' rows trained and held out,
    and those its anchor rows trained."""
    docs = documents_of(cfg.data_dir)
    by_id = {e.shard_id: e for e in scan.shards if e.shard_id and e.valid}
    parts = []
    for sid in plan.shard_ids:
        entry = by_id.get(sid)
        if entry is None:
            continue  # the plan opened it a moment ago; a vanished shard records nothing
        shard = shard_rows(entry, cfg, docs, plan.split_of(sid))
        train_rows, val_rows = effective_rows(
            shard.split, sid, shard.n_rows, RowFilter.from_dict(plan.row_filters.get(sid))
        )
        hi, lo, kind = _digests(shard, train_rows, val_rows)
        parts.append((hi, lo, kind, np.full(hi.size, step, np.uint32)))
    # anchor rows trained their documents too: later new text that repeats them is skipped
    anchors = find_anchor(scan.spec, scan) if plan.anchor and scan.spec is not None else []
    for anchor in anchors:
        sid = anchor.entry.shard_id or ""
        if sid not in plan.anchor or not anchor.usable:
            continue
        shard = shard_rows(anchor.entry, cfg, documents_of(anchor.directory), (0, 0.0))
        drawn = np.unique(np.asarray(plan.anchor[sid], dtype=np.int64))
        hi, lo, kind = _digests(shard, drawn, np.zeros(0, np.int64))
        parts.append((hi, lo, kind, np.full(hi.size, step, np.uint32)))
    return _write(cfg, parts)


def after_run(
    cfg: Config, refs: list[dict[str, Any]], segment: SegmentRef | None
) -> list[dict[str, Any]]:
    """The ledger list once a run's segment is added (merged now and then: tiered)."""
    current = segment_refs(refs)
    if segment is not None and segment.name not in {r.name for r in current}:
        current.append(segment)
    group = plan_merge(current)
    if group:
        merged = merge_segments(ledger_dir(cfg), group)
        names = {g.name for g in group}
        at = next(i for i, r in enumerate(current) if r.name in names)
        current = [r for r in current if r.name not in names]
        current.insert(at, merged)
    return [r.to_dict() for r in current]


def rebuild_from_seen(
    cfg: Config, seen: dict[str, Any], scan: ScanResult, warn: Warn, *, strict: bool
) -> list[dict[str, Any]]:
    """A ledger of one segment made from the seen shards' documents and stored rows.

    ``strict``: a seen shard whose files are gone is an error (a listed segment is being
    replaced and must lose nothing); otherwise it is left out with a warning.
    """
    docs = documents_of(cfg.data_dir)
    present = {e.shard_id: e for e in scan.shards if e.shard_id and e.state == "seen"}
    gone = [sid for sid in seen if sid not in present]
    if gone and strict:
        names = ", ".join(sid[:12] for sid in gone[:3]) + (" ..." if len(gone) > 3 else "")
        raise CheckpointError(
            f"the document ledger in {ledger_dir(cfg)} lost a segment and cannot be rebuilt: "
            f"{len(gone)} seen shard(s) are gone ({names})",
            "restore the ledger folder or those shards from a backup",
        )
    if gone:
        warn(
            f"{len(gone)} seen shard(s) are gone: their documents cannot enter the document "
            "ledger, so an edited copy of them would train again"
        )
    parts = []
    for sid, entry in sorted(present.items()):
        record = entry.record
        assert record is not None
        shard = shard_rows(entry, cfg, docs)
        train_rows, val_rows = effective_rows(shard.split, sid, shard.n_rows, stored_filter(entry))
        hi, lo, kind = _digests(shard, train_rows, val_rows)
        parts.append((hi, lo, kind, np.full(hi.size, record.step, np.uint32)))
    segment = _write(cfg, parts)
    return [segment.to_dict()] if segment is not None else []


def ensure_ledger(
    cfg: Config,
    refs: list[dict[str, Any]] | None,
    seen: dict[str, Any],
    scan: Callable[[], ScanResult],
    warn: Warn,
) -> list[dict[str, Any]]:
    """The ledger list to train with, from the start checkpoint's ``refs``.

    ``None`` (a state from before the ledger) or a listed segment missing/damaged: rebuilt
    from the seen shards (``scan`` is called only then).
    """
    if refs is None:
        if not seen:
            return []
        built = rebuild_from_seen(cfg, seen, scan(), warn, strict=False)
        warn(f"built the document ledger from {len(seen)} seen shard(s) (a one-time upgrade)")
        return built
    problems = check_segments(ledger_dir(cfg), segment_refs(refs))
    if not problems:
        return list(refs)
    ref, why = problems[0]
    warn(f"document ledger segment {ref.name}: {why}; rebuilding the ledger from the seen shards")
    return rebuild_from_seen(cfg, seen, scan(), warn, strict=True)


def listed_by_checkpoints(ckpt_dir: Path) -> set[str]:
    """Segment names any complete checkpoint in ``ckpt_dir`` lists (never deleted)."""
    names: set[str] = set()
    for ref in list_checkpoints(ckpt_dir):
        if not ref.complete:
            continue
        try:
            data = json.loads((ref.path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for item in (data.get("ledger") or []) if isinstance(data, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                names.add(item["name"])
    return names


def clean_ledger(cfg: Config, current: list[dict[str, Any]]) -> list[str]:
    """Remove segments neither ``current`` nor any kept checkpoint lists (and temporaries)."""
    keep = listed_by_checkpoints(cfg.checkpoint_path) | {r["name"] for r in current}
    return clean_unlisted(ledger_dir(cfg), keep)
