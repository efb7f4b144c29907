"""How fast is a document-ledger lookup at 10^8 documents, and what memory does it add? (issue 15)

Builds a ledger of N random digests (default 10^8) in a temporary folder, streaming:
chunks of ``--chunk`` documents are written as sorted segments (``write_segment``),
then all but the last two are merged (``merge_segments``) into one large segment —
the tiered shape ``plan_merge`` leaves a long-lived model's ledger in. 1% of the
documents are held out, the rest trained. Then ``lookup`` is timed for:

- shard: a new ~1 GB shard of ~3 KB documents, 350,000 digests, 90% already in the ledger;
- lines: 10^6 tiny documents (line mode), 90% present (cost per million queries);
- few: 20 documents (a tiny shard): only the blocks that hold a query are read.

Each lookup is the median of ``--runs`` in this process, warm page cache. Its memory
is measured in a fresh subprocess per case: ru_maxrss after the lookup minus before it
(queries already loaded), so no earlier peak of the building process hides it.
Everything generated is deleted at the end.

Usage: python benchmarks/bench_ledger.py [--docs 100000000] [--chunk 5000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import machine_description, median_time
from allllm.data.ledger import (
    KIND_HELD_OUT,
    KIND_TRAINED,
    Ledger,
    SegmentRef,
    clean_unlisted,
    merge_segments,
    write_segment,
)

CASES = (("shard", 350_000), ("lines", 1_000_000), ("few", 20))
PRESENT = 0.9
HELD_OUT = 0.01
U64_MAX = np.iinfo(np.uint64).max


def _digests(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(0, U64_MAX, n, dtype=np.uint64, endpoint=True),
        rng.integers(0, U64_MAX, n, dtype=np.uint64, endpoint=True),
    )


def build(ledger_dir: Path, docs: int, chunk: int, keep: int) -> tuple[list[SegmentRef], dict]:
    """The ledger's segments and a sample of ``keep`` of its documents (hi, lo, kind)."""
    n_chunks = -(-docs // chunk)
    per_chunk = -(-keep // n_chunks)
    chunks, samples = [], []
    t0 = time.perf_counter()
    for i in range(n_chunks):
        n = min(chunk, docs - i * chunk)
        rng = np.random.default_rng([15, i])
        hi, lo = _digests(rng, n)
        kind = np.where(rng.random(n) < HELD_OUT, KIND_HELD_OUT, KIND_TRAINED).astype(np.uint32)
        pick = rng.choice(n, min(per_chunk, n), replace=False)
        samples.append((hi[pick], lo[pick], kind[pick]))
        chunks.append(write_segment(ledger_dir, hi, lo, kind, (i + 1) * 100))
        del hi, lo, kind
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    if len(chunks) > 3:
        segments = [merge_segments(ledger_dir, chunks[:-2]), *chunks[-2:]]
    else:
        segments = chunks
    merged = time.perf_counter() - t0
    clean_unlisted(ledger_dir, {s.name for s in segments})
    hi, lo, kind = (np.concatenate([s[j] for s in samples])[:keep] for j in range(3))
    stats = {
        "written_s": written,
        "merged_s": merged,
        "merged_records": sum(c.count for c in chunks[:-2]),
    }
    return segments, {"hi": hi, "lo": lo, "kind": kind, **stats}


def queries(sample: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``n`` digests, ``PRESENT`` of them from the ledger, shuffled: (hi, lo, present, trained)."""
    rng = np.random.default_rng([15, 1000 + seed])
    k = int(n * PRESENT)
    pick = rng.choice(sample["hi"].size, k, replace=False)
    new_hi, new_lo = _digests(rng, n - k)
    hi = np.concatenate([sample["hi"][pick], new_hi])
    lo = np.concatenate([sample["lo"][pick], new_lo])
    shuffle = rng.permutation(n)
    trained = int((sample["kind"][pick] == KIND_TRAINED).sum())
    return hi[shuffle], lo[shuffle], k, trained


def maxrss_mb() -> float:
    """This process's peak resident memory, MB.

    Linux keeps ru_maxrss across exec, so a child started from a big parent begins at the
    parent's size; VmHWM is the same peak for this process image only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes / KiB


def child(ledger_dir: str, refs_json: str, queries: str) -> None:
    """In a fresh process: the peak memory one lookup adds."""
    refs = [SegmentRef(**r) for r in json.loads(Path(refs_json).read_text())]
    hi, lo = np.load(f"{queries}.hi.npy"), np.load(f"{queries}.lo.npy")
    ledger = Ledger(Path(ledger_dir), refs)
    before = maxrss_mb()
    t0 = time.perf_counter()
    ledger.lookup(hi, lo)
    seconds = time.perf_counter() - t0
    print(json.dumps({"before_mb": before, "after_mb": maxrss_mb(), "seconds": seconds}))


def rss_added(tmp: Path, ledger_dir: Path, hi: np.ndarray, lo: np.ndarray) -> tuple[float, float]:
    """(peak MB before the lookup, MB the lookup added) in a fresh process."""
    np.save(tmp / "queries.hi.npy", hi)
    np.save(tmp / "queries.lo.npy", lo)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(ledger_dir), str(tmp / "refs.json"),
         str(tmp / "queries")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["before_mb"], got["after_mb"] - got["before_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000_000)
    parser.add_argument("--chunk", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    keep = max(int(n * PRESENT) for _, n in CASES)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp_name:
        tmp = Path(tmp_name)
        ledger_dir = tmp / "ledger"
        segments, sample = build(ledger_dir, args.docs, args.chunk, keep)
        build_peak = maxrss_mb()
        (tmp / "refs.json").write_text(json.dumps([s.to_dict() for s in segments]))
        ledger = Ledger(ledger_dir, segments)
        size = sum(p.stat().st_size for p in ledger_dir.iterdir())
        rows = []
        for seed, (name, n) in enumerate(CASES):
            hi, lo, present, trained = queries(sample, n, seed)
            found = ledger.lookup(hi, lo)  # warms the page cache, and is checked
            if (
                int((found.trained | found.held_out).sum()) != present
                or int(found.trained.sum()) != trained
            ):
                raise SystemExit(f"{name}: lookup found the wrong documents")
            seconds = median_time(lambda hi=hi, lo=lo: ledger.lookup(hi, lo), args.runs)
            rows.append((name, n, seconds, *rss_added(tmp, ledger_dir, hi, lo)))
    print(f"machine: {machine_description()}")
    print(
        f"ledger: {args.docs:,} documents, {ledger.count:,} records in {len(segments)} "
        f"segments, {size / 1e9:.2f} GB"
    )
    print(
        f"built: write_segment {args.docs / sample['written_s'] / 1e6:.2f} M docs/s "
        f"({sample['written_s']:.1f} s, with generation), merge_segments "
        f"{sample['merged_records'] / max(sample['merged_s'], 1e-9) / 1e6:.2f} M records/s "
        f"({sample['merged_s']:.1f} s); peak memory of the build {build_peak:.0f} MB"
    )
    print(
        f"{'case':<7}{'queries':>11}{'present':>9}{'lookup':>10}{'per 10^6 q':>12}"
        f"{'peak before':>14}{'RSS added':>11}"
    )
    for name, n, seconds, before, added in rows:
        print(
            f"{name:<7}{n:>11,}{PRESENT:>9.0%}{seconds:>9.3f}s"
            f"{f'{seconds * 1e6 / n:.2f}s' if n >= 100_000 else '-':>12}"
            f"{before:>11.1f} MB{added:>8.1f} MB"
        )
    worst = max(r[4] for r in rows)
    print(f"budget: RSS added < 100 MB: {'OK' if worst < 100 else 'OVER'} (worst {worst:.1f} MB)")


if __name__ == "__main__":
    main()
