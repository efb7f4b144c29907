"""``allllm status --source PATH``: which run trained each document of one raw file.

The file's documents are found in the current shards made from it (new or
seen; superseded shards hold an older version of its text), by the ``source``
index of each sidecar record. Each document's digest is looked up in the
model's ledger, which knows the step of the run that trained it; that step
names the run in ``runs.jsonl``. Documents not trained yet are listed with the
shard and rows that hold them. Reads only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from allllm.data.documents import NO_SOURCE
from allllm.data.registry import ScanSpec, ShardEntry, TokenizerIdentity, scan_shards
from allllm.errors import DataError
from allllm.util.jsonl import read_jsonl

if TYPE_CHECKING:
    from allllm.config import Config

#: untrained documents listed one by one (the counts cover all of them)
LIST_AT_MOST = 50


def _same_file(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b
    except OSError:
        return False


def _source_docs(entry: ShardEntry, index: int, docs: np.ndarray) -> np.ndarray:
    """Positions of ``entry``'s documents that come from source ``index``."""
    assert entry.meta is not None
    if len(entry.meta.sources) == 1:
        return np.arange(docs.size)  # also shards whose documents were split from the stream
    return np.flatnonzero((docs["source"] == index) & (docs["source"] != NO_SOURCE))


def source_provenance(
    cfg: Config,
    path: str,
    ident: TokenizerIdentity,
    seen: Any,
    checkpoint: dict[str, Any] | None,
) -> dict[str, Any]:
    """The provenance report of raw file ``path`` (see the module doc); DataError when no
    current shard holds it."""
    from allllm.train.ledger_sync import documents_of, open_ledger
    from allllm.train.metrics import RUNS_FILE

    target = Path(path).resolve()
    scan = scan_shards(cfg.data_dir, ScanSpec.from_config(cfg, ident), seen)
    found = []
    for entry in scan.shards:
        if entry.state not in ("new", "seen") or entry.meta is None:
            continue
        if entry.eval_only or entry.anchor_only:
            continue
        for i, src in enumerate(entry.meta.sources):
            if _same_file(src.path, target):
                found.append((entry, i))
    # a seen shard stays "seen" when a newer one supersedes it: only the newest text counts
    replaced = {sid for entry, _ in found for sid in (entry.meta.supersedes if entry.meta else [])}
    found = [(e, i) for e, i in found if e.shard_id not in replaced]
    if not found:
        raise DataError(
            f"{path}: no current shard of {cfg.data_dir} was made from this file",
            f"check the path, or run `allllm tokenize --model {cfg.name}` first",
        )
    refs = (checkpoint or {}).get("ledger") or []
    ledger = open_ledger(cfg, refs)
    runs = {r.get("end_step"): r.get("run_id") for r in read_jsonl(cfg.checkpoint_path / RUNS_FILE)}
    docs_of = documents_of(cfg.data_dir)
    report: dict[str, Any] = {
        "source": path,
        "shards": [],
        "documents": 0,
        "trained": 0,
        "held_out": 0,
        "not_trained": 0,
        "runs": [],
        "not_trained_documents": [],
        "ledger_built": (checkpoint or {}).get("ledger") is not None or checkpoint is None,
    }
    by_step: dict[int, int] = {}
    for entry, index in found:
        docs = docs_of(entry)
        shard = {"name": entry.name, "state": entry.state, "step": entry.step, "documents": None}
        report["shards"].append(shard)
        if docs is None:
            continue  # shard-level accounting: neither BOS nor EOS marks its documents
        picks = _source_docs(entry, index, docs)
        shard["documents"] = int(picks.size)
        report["documents"] += int(picks.size)
        if ledger is not None and picks.size:
            hit = ledger.lookup(docs["hi"][picks], docs["lo"][picks])
            trained, held, steps = hit.trained, hit.held_out & ~hit.trained, hit.step
        else:
            trained = held = np.zeros(picks.size, dtype=bool)
            steps = np.full(picks.size, -1, dtype=np.int64)
        report["trained"] += int(trained.sum())
        report["held_out"] += int(held.sum())
        for step, n in zip(*np.unique(steps[trained], return_counts=True)):
            by_step[int(step)] = by_step.get(int(step), 0) + int(n)
        starts = docs["start"].astype(np.int64)
        ends = np.append(starts[1:], entry.n_tokens or 0)
        seq = entry.seq_len or cfg.data.seq_len
        for k in np.flatnonzero(~trained & ~held):
            report["not_trained"] += 1
            if len(report["not_trained_documents"]) < LIST_AT_MOST:
                d = int(picks[k])
                report["not_trained_documents"].append(
                    {
                        "shard": entry.name,
                        "document": d,
                        "tokens": int(ends[d] - starts[d]),
                        "rows": [int(starts[d] // seq), int((ends[d] - 1) // seq)],
                    }
                )
    report["runs"] = [
        {"step": step, "run_id": runs.get(step), "documents": n}
        for step, n in sorted(by_step.items())
    ]
    return report
