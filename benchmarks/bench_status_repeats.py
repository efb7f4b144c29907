"""What do `status`'s repeat counts add for 10,000 new shards? (issue 15: status under 1 s)

`status` reports, per new shard, the rows made only of documents the model has
trained. Computing them reads the shard's sidecar and asks the ledger; the answer
is cached per (shard, ledger version, split) in `ledger/status-cache.json`. This
times `use.repeats.repeat_counts` over N new shards whose counts are cached (the
steady state: the ledger changes only when a run completes) against the same
call computing them (cold: sidecars read, ledger asked), median of 3, and against
the I/O floor of reading the cache file. The shards are tiny real sidecars (8
documents of 16 ids) over a ledger of 10^6 digests.

Usage: python benchmarks/bench_status_repeats.py [--shards 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from _machine import machine_description
from allllm.data.documents import DOC_DTYPE
from allllm.data.ledger import KIND_TRAINED, write_segment
from allllm.use import repeats


def _setup(root: Path, n: int) -> tuple[Any, list[Any], list[dict[str, Any]], dict[str, Any]]:
    rng = np.random.default_rng(0)
    ledger_dir = root / "checkpoints" / "m" / "ledger"
    ledger_dir.mkdir(parents=True)
    hi = rng.integers(0, 2**63, 10**6, dtype=np.uint64)
    lo = rng.integers(0, 2**63, 10**6, dtype=np.uint64)
    ref = write_segment(ledger_dir, hi, lo, np.full(hi.size, KIND_TRAINED, np.uint32), 1)
    entries, docs = [], {}
    for i in range(n):
        sid = f"{i:064x}"
        rec = np.zeros(8, DOC_DTYPE)
        rec["start"] = np.arange(8) * 16
        pick = rng.integers(0, hi.size, 8)
        rec["hi"], rec["lo"] = hi[pick], lo[pick]
        rec["hi"][: i % 3] += 1  # some documents are new
        docs[sid] = rec
        entries.append(
            SimpleNamespace(shard_id=sid, n_rows=4, seq_len=32, last_row_len=32, meta=1, valid=True)
        )
    cfg = SimpleNamespace(checkpoint_path=root / "checkpoints" / "m", data_dir=root / "data")
    return cfg, entries, [ref.to_dict()], docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, entries, refs, docs = _setup(Path(tmp), args.shards)
        splits = {e.shard_id: (1, 0.0) for e in entries}
        import allllm.train.ledger_sync as sync

        sync.documents_of = lambda _d: lambda e: docs[e.shard_id]  # type: ignore[assignment]
        cache = cfg.checkpoint_path / "ledger" / repeats.CACHE_FILE
        cold, warm, floor = [], [], []
        for _ in range(args.runs):
            cache.unlink(missing_ok=True)
            t0 = time.perf_counter()
            first = repeats.repeat_counts(cfg, entries, refs, splits)  # type: ignore[arg-type]
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            again = repeats.repeat_counts(cfg, entries, refs, splits)  # type: ignore[arg-type]
            warm.append(time.perf_counter() - t0)
            assert again == first
            t0 = time.perf_counter()
            json.loads(cache.read_text())
            floor.append(time.perf_counter() - t0)
        repeated = sum(1 for c in first.values() if c["repeat_rows"])
        print(f"{args.shards:,} new shards ({repeated:,} with repeats), ledger of 10^6 documents")
        print(f"  cached (status's steady state): {statistics.median(warm) * 1000:8.1f} ms")
        print(f"  cold (sidecars + ledger lookup): {statistics.median(cold) * 1000:8.1f} ms")
        print(f"  floor (read the cache file):     {statistics.median(floor) * 1000:8.1f} ms")
        print(f"  cached / floor: {statistics.median(warm) / statistics.median(floor):.1f}x")
        print(machine_description())


if __name__ == "__main__":
    main()
