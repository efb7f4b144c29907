"""How much of each new shard a model already trained: ``status``'s ``repeat_rows`` / ``repeat_tokens``.

A new shard's rows made only of documents in the model's ledger would be
skipped by the next run (:mod:`allllm.data.row_filter`). Computing that reads
the shard's sidecar and asks the ledger, so the answer is cached per (shard,
ledger version, split) in ``checkpoints/<name>/ledger/status-cache.json``:
the ledger only changes when a run completes, so ``status`` over 10,000
shards reads one small file. The cache is only a cache — a damaged or foreign
one is ignored and rewritten, never trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allllm.data.registry import ShardEntry
from allllm.util.atomic import atomic_write_text

if TYPE_CHECKING:
    from allllm.config import Config

CACHE_FILE = "status-cache.json"
CACHE_VERSION = 1


def _read_cache(path: Path, version: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format_version") != CACHE_VERSION
        or data.get("ledger") != version
        or not isinstance(data.get("shards"), dict)
    ):
        return {}
    return data["shards"]


def repeat_counts(
    cfg: Config,
    entries: list[ShardEntry],
    refs: list[dict[str, Any]] | None,
    splits: dict[str, tuple[int, float]],
) -> dict[str, dict[str, int]]:
    """shard_id -> {repeat_rows, repeat_tokens, held_out_rows} for new, trainable ``entries``.

    ``refs``: the latest checkpoint's ledger segments (none: nothing is a repeat).
    ``splits``: the split each shard would be planned with.
    """
    if not refs or not entries:
        return {}
    import numpy as np

    from allllm.data.ledger import check_segments
    from allllm.train.ledger_sync import documents_of, ledger_dir, open_ledger

    ledger = open_ledger(cfg, refs)
    assert ledger is not None
    if check_segments(ledger.ledger_dir, ledger.segments):
        return {}  # a lost or damaged segment: the next train rebuilds it (see the notes)
    cache_path = ledger_dir(cfg) / CACHE_FILE
    cached = _read_cache(cache_path, ledger.version)
    out: dict[str, dict[str, int]] = {}
    todo = []
    for entry in entries:
        sid = entry.shard_id or ""
        seed, fraction = splits[sid]
        hit = cached.get(sid)
        if isinstance(hit, dict) and hit.get("split") == [seed, fraction]:
            out[sid] = {k: int(hit[k]) for k in ("repeat_rows", "repeat_tokens", "held_out_rows")}
        else:
            todo.append(entry)
    if not todo:
        return out
    from allllm.data.row_filter import DocLayout, classify
    from allllm.train.planning import shard_rows

    docs = documents_of(cfg.data_dir)
    shards = []
    for entry in todo:
        shard = shard_rows(entry, cfg, docs, splits[entry.shard_id or ""])
        shards.append((shard, DocLayout.of(shard) if shard.docs is not None else None))
    # one pass over the ledger for every shard (a lookup reads the whole ledger once)
    parts = [(s.docs["hi"][lay.index], s.docs["lo"][lay.index]) for s, lay in shards if lay]
    found = ledger.lookup(
        np.concatenate([p[0] for p in parts] or [np.zeros(0, np.uint64)]),
        np.concatenate([p[1] for p in parts] or [np.zeros(0, np.uint64)]),
    )
    at = 0
    for shard, lay in shards:
        counts = {"repeat_rows": 0, "repeat_tokens": 0, "held_out_rows": 0}
        if lay is not None:
            n = lay.index.size
            trained, held = found.trained[at : at + n], found.held_out[at : at + n]
            at += n
            known = (trained, held)
            rec = classify([shard], lambda _h, _l, k=known: k, dedup=False)[0].record
            counts = {
                "repeat_rows": rec.skipped_rows,
                "repeat_tokens": rec.skipped_tokens,
                "held_out_rows": rec.held_out_rows,
            }
        out[shard.shard_id] = counts
        cached[shard.shard_id] = {**counts, "split": list(shard.split)}
    try:
        body = {"format_version": CACHE_VERSION, "ledger": ledger.version, "shards": cached}
        atomic_write_text(cache_path, json.dumps(body) + "\n")
    except OSError:
        pass  # a read-only checkpoint dir: status still answers, only slower next time
    return out
