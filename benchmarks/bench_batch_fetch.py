"""What does fetching one micro-batch cost next to one training step? (issue 4: under 2%)

The `tiny` preset (micro batch 8 x seq_len 256): writes a realistic shard of
--rows rows twice — as ``.bin`` and as ``.jsonl`` only — then times
``ShardDataset.fetch`` of random micro-batches drawn by ``RowSampler`` from the
training rows, against one forward + backward + AdamW step of the tiny model
(allllm.model.Transformer) measured in the same run. Files were just written,
so they sit in the page cache, as they do from the second epoch or a re-run
on; the one-time ``.jsonl`` line index build is reported apart.

Usage: python benchmarks/bench_batch_fetch.py [--rows 20000] [--fetches 300] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import machine_description

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from allllm.config import load_config_file
from allllm.data.dataset import ShardDataset, ShardSource
from allllm.data.sampler import RowSampler
from allllm.model import Transformer
from shard_factory import random_rows, tokenizer_info, write_shard

ROOT = Path(__file__).resolve().parents[1]


def time_fetches(ds: ShardDataset, rows: np.ndarray, batch: int, n: int) -> float:
    """Median seconds per fetch of ``batch`` rows, in the sampler's shuffled order."""
    sampler = RowSampler(rows.size, batch, seed=1)
    times = []
    for picks in sampler:
        if len(times) == n:
            break
        t0 = time.perf_counter()
        ds.fetch(rows[picks])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_steps(cfg, ids: torch.Tensor, lengths: torch.Tensor, steps: int) -> float:
    """Median seconds per optimizer step (forward + backward + AdamW), after a warm-up step."""
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total, count = model(ids, lengths)
        (total / count).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--fetches", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config_file(ROOT / "configs" / "tiny.json")
    seq, batch, vocab = cfg.data.seq_len, cfg.train.micro_batch_size, cfg.model.vocab_size
    tok = tokenizer_info(vocab_size=259, eos_id=257, pad_id=258)
    rows = random_rows(args.rows, seq, last_row_len=100, vocab=256, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        sources = {}
        for role in ("bin", "jsonl"):
            shard = write_shard(
                data, rows, seq_len=seq, source=f"bench-{role}", formats=(role,), tokenizer=tok
            )
            sources[role] = ShardSource.from_meta(data, shard.stem, shard.meta)
        sizes = {role: src.path.stat().st_size / 1e6 for role, src in sources.items()}
        fetch = {}
        t0 = time.perf_counter()
        datasets = {role: ShardDataset([src], vocab_limit=vocab) for role, src in sources.items()}
        datasets["jsonl"].fetch([0])  # builds and caches the line index
        index_build = time.perf_counter() - t0
        for role, ds in datasets.items():
            train_rows = ds.training_rows(cfg.train.seed, cfg.data.val_fraction)
            fetch[role] = time_fetches(ds, train_rows, batch, args.fetches)
        ids, lengths = datasets["bin"].fetch(np.arange(batch))
        step = time_steps(cfg, ids, lengths, args.steps)
    print(
        f"machine: {machine_description()}; torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"tiny preset: micro batch {batch} x seq_len {seq}; shard of {args.rows:,} rows "
        f"(.bin {sizes['bin']:.1f} MB, .jsonl {sizes['jsonl']:.1f} MB)"
    )
    print(f"training step (forward+backward+AdamW), median of {args.steps}: {1000 * step:.1f} ms")
    print("| source | fetch per micro-batch | share of a step | budget 2% |")
    print("|---|---|---|---|")
    for role, t in fetch.items():
        share = t / step
        print(f"| .{role} | {1e6 * t:.0f} µs | {share:.3%} | {'OK' if share < 0.02 else 'OVER'} |")
    print(
        f"one-time .jsonl line index build: {1000 * index_build:.0f} ms (cached in data/.allllm/cache)"
    )


if __name__ == "__main__":
    main()
