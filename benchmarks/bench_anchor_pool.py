"""How long does planning a run spend drawing anchor rows, at pool sizes of a real anchor? (issue 16)

The anchor pool (``allllm.data.anchor_pool``) regenerates its pass order from seeds
at every draw, so the checkpoint holds a few numbers instead of the drawn rows. This
times one draw (``--draw`` rows) from pools of 10^6 to ``--max-rows`` rows in shards
of 50,000 rows (a 2048-token row: 10^7 rows ≈ 20B tokens of anchor text):

- plain: a pool that did not change since the last draw (one block);
- changed: the pool changed mid-pass (a shard removed, one added: two blocks);

against the baseline of the same process: ``numpy`` shuffling an index array of the
pool's size once (the floor of any exact without-replacement shuffle). Median of
``--runs``; peak memory of the draw as VmHWM growth in a fresh subprocess.

Usage: python benchmarks/bench_anchor_pool.py [--max-rows 10000000] [--draw 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

from _machine import machine_description, median_time
from allllm.data.anchor_pool import AnchorPool


def pools(rows: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    shards = [(f"{k:064x}", 50_000) for k in range(max(1, rows // 50_000))]
    return shards, [*shards[1:], ("f" * 64, 50_000)]


def memory(state: dict, shards: list[tuple[str, int]], n: int) -> float:
    """MB one draw from the stored ``state`` adds to the peak RSS (VmHWM of a fresh
    subprocess — ru_maxrss would start at this process's — as planning does: the pool read
    from the checkpoint, then drawn once)."""
    code = (
        "import json, sys\nfrom allllm.data.anchor_pool import AnchorPool\n"
        "def hwm():\n    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n            return int(line.split()[1])\n"
        "state, shards, n = json.load(sys.stdin)\n"
        "pool = AnchorPool.from_dict(state, 0)\nshards = [tuple(s) for s in shards]\n"
        "before = hwm()\npool.draw(shards, n)\nprint(hwm() - before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([state, shards, n]),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip()) / 1024


def measure(size: int, n: int, runs: int) -> dict[str, float]:
    shards, other = pools(size)
    _, pool = AnchorPool.fresh(1).draw(shards, n)
    index = np.arange(size, dtype=np.int64)
    rng = np.random.default_rng(0)
    base = median_time(lambda: rng.shuffle(index), runs)
    plain = median_time(lambda: pool.draw(shards, n), runs)
    changed = median_time(lambda: pool.draw(other, n), runs)
    return {
        "pool_rows": size,
        "shuffle_s": round(base, 3),
        "draw_s": round(plain, 3),
        "draw_ratio": round(plain / base, 2),
        "changed_s": round(changed, 3),
        "changed_ratio": round(changed / base, 2),
        "draw_mb": round(memory(pool.to_dict(), shards, n), 1),
        "changed_mb": round(memory(pool.to_dict(), other, n), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-rows", type=int, default=10_000_000)
    parser.add_argument("--draw", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    for size in [s for s in (10**6, 10**7, 10**8) if s <= args.max_rows]:
        print(json.dumps(measure(size, args.draw, args.runs)))


if __name__ == "__main__":
    main()
