"""How long does a registry scan of 10,000 shards take? (issue 4: under 1 second)

Writes N tiny shards (a one-row ``.bin`` + its ``.meta.json``, plus a ``.jsonl``
for every tenth) into a temporary data dir, then times ``scan_shards`` (median
of 3) against the I/O floor measured in the same run: listing the dir, stating
every file and reading every meta file's bytes. Half the shards are marked
seen, so the seen/duplicate/superseded passes do real work.

Usage: python benchmarks/bench_registry.py [--shards 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_description, median_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from allllm.data.registry import ScanSpec, TokenizerIdentity, scan_shards
from allllm.data.seen import SeenMap, SeenRecord
from shard_factory import tokenizer_info, write_shard

FINGERPRINT = "a" * 64


def make_shards(data_dir: Path, n: int) -> SeenMap:
    tok = tokenizer_info(fingerprint=FINGERPRINT)
    records = {}
    for i in range(n):
        formats = ("jsonl", "bin") if i % 10 == 0 else ("bin",)
        shard = write_shard(
            data_dir, [[i % 250, i // 250 % 250, i // 62500, 3]], seq_len=4, source=f"doc{i:05d}", formats=formats,
            tokenizer=tok, durable=False,
        )  # fmt: skip
        if i % 2:
            records[shard.shard_id] = SeenRecord(
                files={"bin": shard.files["bin"].name}, rows=1, tokens=4, step=i, run_id="r",
                completed="2024-07-01T12:00:00Z", val_seed=1, val_fraction=0.01,
            )  # fmt: skip
    return SeenMap(records)


def io_floor(data_dir: Path) -> None:
    """List, stat and read every meta: what any scan must at least do."""
    for entry in os.scandir(data_dir):
        entry.stat()
        if entry.name.endswith(".meta.json"):
            with open(entry.path, "rb") as fh:
                fh.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    spec = ScanSpec(4, 264, TokenizerIdentity("byte", None, FINGERPRINT, 264))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        seen = make_shards(data_dir, args.shards)
        made = time.perf_counter() - t0
        result = scan_shards(data_dir, spec, seen)  # warm the page cache once
        states = {s: len(result.by_state(s)) for s in ("new", "seen", "invalid")}
        floor = median_time(lambda: io_floor(data_dir), args.runs)
        scan = median_time(lambda: scan_shards(data_dir, spec, seen), args.runs)
    print(f"machine: {machine_description()}")
    print(f"{args.shards} shards written in {made:.1f} s; states {states}")
    print(f"I/O floor (scandir + stat + read metas): {floor:.3f} s")
    print(
        f"scan_shards median of {args.runs}:           {scan:.3f} s  ({scan / floor:.1f}x the floor)"
    )
    print(f"budget 1.000 s: {'OK' if scan < 1.0 else 'OVER'}")


if __name__ == "__main__":
    main()
